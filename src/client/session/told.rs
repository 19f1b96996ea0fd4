//! What the client was told of the parameters Postgres reports (ParameterStatus), so
//! that a reset tells it the values its session went back to.
//!
//! Straight to Postgres, `RESET ALL` or `DISCARD ALL` reports every reported parameter
//! that changes, back to the session's defaults: the server's, or the client's
//! startup parameters. Through pgmux the session's defaults are not the server
//! connection's: a startup parameter is a setting pgmux applies (hidden), so the
//! server reports its own default where the client expects its startup value; and a
//! `DISCARD ALL` between transactions is answered by pgmux alone. After such a reset,
//! each value the client was told since login and that differs from its login value
//! is told again.

use super::Session;
use crate::protocol::build;
use crate::server::settings::canonical_client_encoding;

/// Reported since login.
#[derive(Default)]
pub(super) struct Told {
    /// Name as the server spells it, and the value the client last got.
    values: Vec<(String, String)>,
    /// A reset committed in the unit now ending, told at its ReadyForQuery.
    due: Option<Due>,
}

enum Due {
    /// `RESET ALL`, then settings made since.
    All {
        except: Vec<String>,
    },
    Names(Vec<String>),
}

/// Reported parameters that `RESET ALL` leaves alone (`DISCARD ALL` does not).
const IDENTITY: &[&str] = &["session_authorization", "is_superuser"];

impl Session {
    /// The client got a ParameterStatus after login.
    pub(super) fn note_told(&mut self, name: &str, value: &str) {
        let told = &mut self.rare().told;
        match told.values.iter_mut().find(|(n, _)| n == name) {
            Some((_, v)) => {
                v.clear();
                v.push_str(value);
            }
            None => told.values.push((name.to_string(), value.to_string())),
        }
    }

    /// A reset of `name` (all when `None`) committed: at the end of the unit, the
    /// client hears the values it reset to.
    pub(super) fn reset_told(&mut self, name: Option<&str>) {
        // Nothing was told since login: the client believes the login values.
        let Some(told) = self
            .rare
            .as_deref_mut()
            .map(|r| &mut r.told)
            .filter(|t| !t.values.is_empty())
        else {
            return;
        };
        match (name, &mut told.due) {
            (None, due) => *due = Some(Due::All { except: Vec::new() }),
            (Some(n), Some(Due::All { except })) => except.retain(|e| e != n),
            (Some(n), Some(Due::Names(names))) => names.push(n.to_string()),
            (Some(n), due) => *due = Some(Due::Names(vec![n.to_string()])),
        }
    }

    /// A setting committed after a reset in the same transaction: its value is the
    /// one the server reported, not the login value.
    pub(super) fn set_told(&mut self, name: &str) {
        match self.rare.as_deref_mut().and_then(|r| r.told.due.as_mut()) {
            Some(Due::All { except }) => except.push(name.to_string()),
            Some(Due::Names(names)) => names.retain(|n| n != name),
            None => {}
        }
    }

    /// A reset is waiting for the end of its unit ([`Session::retell`]).
    pub(super) fn retell_due(&self) -> bool {
        self.rare.as_ref().is_some_and(|r| r.told.due.is_some())
    }

    /// Tells the client the login values of what was reset (`identity`: the session
    /// authorization too, as `DISCARD ALL` resets it).
    pub(super) fn retell(&mut self, identity: bool) {
        let Some(r) = self.rare.as_deref_mut() else {
            return;
        };
        let mut told = std::mem::take(&mut r.told);
        let due = told.due.take();
        for (name, value) in told.values.iter_mut() {
            let lower = name.to_ascii_lowercase();
            let reset = match &due {
                None => identity || !IDENTITY.contains(&lower.as_str()),
                Some(Due::All { except }) => {
                    !IDENTITY.contains(&lower.as_str()) && !except.contains(&lower)
                }
                Some(Due::Names(names)) => names.contains(&lower),
            };
            if !reset {
                continue;
            }
            if let Some(login) = self.login_value(name, &lower) {
                if login != *value {
                    build::parameter_status(&mut self.cwbuf, name.as_bytes(), login.as_bytes());
                    *value = login;
                }
            }
        }
        self.rare().told = told;
    }

    /// What the client was told of `name` at login: its startup parameter, else the
    /// server's value.
    fn login_value(&self, name: &str, lower: &str) -> Option<String> {
        if let Some(v) = self.startup.value(lower) {
            if lower == "client_encoding" {
                return canonical_client_encoding(&v).map(str::to_string);
            }
            return Some(v);
        }
        let reported = self.pool.reported()?;
        reported
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    }
}
