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

    pub fn code(self) -> &'static str {
        self.0
    }
}

impl std::fmt::Display for SqlState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}
