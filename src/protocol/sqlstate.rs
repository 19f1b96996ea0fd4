//! SQLSTATE codes pgmux reports itself (Postgres docs, Appendix A).

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SqlState(pub &'static str);

impl SqlState {
    pub const TOO_MANY_CONNECTIONS: SqlState = SqlState("53300");
    pub const QUERY_CANCELED: SqlState = SqlState("57014");
    pub const IDLE_IN_TRANSACTION_TIMEOUT: SqlState = SqlState("25P03");
    pub const CONNECTION_FAILURE: SqlState = SqlState("08006");
    pub const PROTOCOL_VIOLATION: SqlState = SqlState("08P01");
    pub const FEATURE_NOT_SUPPORTED: SqlState = SqlState("0A000");
    pub const INVALID_CATALOG_NAME: SqlState = SqlState("3D000");
    pub const INVALID_PASSWORD: SqlState = SqlState("28P01");
    pub const INVALID_AUTHORIZATION: SqlState = SqlState("28000");
    pub const ADMIN_SHUTDOWN: SqlState = SqlState("57P01");
    pub const CANNOT_CONNECT_NOW: SqlState = SqlState("57P03");
    pub const INTERNAL_ERROR: SqlState = SqlState("XX000");
    pub const CONNECTION_EXCEPTION: SqlState = SqlState("08000");
    pub const INVALID_PARAMETER_VALUE: SqlState = SqlState("22023");
    pub const SYNTAX_ERROR: SqlState = SqlState("42601");

    pub fn code(self) -> &'static str {
        self.0
    }

    /// The code a server sent, for passing on to a client when the server refused a
    /// setting (guc.c's codes); another code, which no setting gives, reads as
    /// `22023` invalid_parameter_value.
    pub fn of_setting_error(code: &str) -> SqlState {
        const CODES: [&str; 7] = [
            "22023", // invalid_parameter_value
            "42704", // undefined_object: unrecognized configuration parameter
            "42602", // invalid_name
            "42501", // insufficient_privilege
            "25001", // active_sql_transaction
            "0A000", // feature_not_supported
            "22P02", // invalid_text_representation
        ];
        SqlState(CODES.into_iter().find(|c| *c == code).unwrap_or(CODES[0]))
    }
}

impl std::fmt::Display for SqlState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_setting_error_keeps_the_server_code_it_knows() {
        assert_eq!(SqlState::of_setting_error("42704").code(), "42704");
        assert_eq!(SqlState::of_setting_error("42501").code(), "42501");
        assert_eq!(SqlState::of_setting_error("XX000").code(), "22023");
        assert_eq!(SqlState::of_setting_error("").code(), "22023");
    }
}
