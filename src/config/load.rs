//! Reading the TOML file into [`Config`], collecting every problem with its key path.

use super::Config;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl Config {
    pub fn from_toml_str(
        _text: &str,
        _path: Option<std::path::PathBuf>,
    ) -> Result<Config, ConfigErrors> {
        Err(ConfigErrors(vec![]))
    }
}
