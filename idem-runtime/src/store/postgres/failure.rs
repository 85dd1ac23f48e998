//! sqlx errors as [`StoreError`]s, and which of them leave a connection unusable.

use std::time::Duration;

use crate::error::{StoreError, StoreErrorKind};

/// SQLSTATE classes and codes this store tells apart.
mod code {
    /// Class 08: connection exceptions.
    pub(super) const CONNECTION_CLASS: &str = "08";
    /// Class 57P: the server shut the session (`pg_terminate_backend`, shutdown, crash).
    pub(super) const SHUTDOWN_CLASS: &str = "57P";
    /// `query_canceled`: the statement timeout (or a cancel request).
    pub(super) const QUERY_CANCELED: &str = "57014";
    /// Class 28: invalid authorization.
    pub(super) const AUTH_CLASS: &str = "28";
    /// `invalid_catalog_name`: the database does not exist.
    pub(super) const NO_DATABASE: &str = "3D000";
    /// `lock_not_available`: a lock wait ran past `lock_timeout`.
    pub(super) const LOCK_NOT_AVAILABLE: &str = "55P03";
}

fn sqlstate(error: &sqlx::Error) -> Option<String> {
    match error {
        sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()),
        _ => None,
    }
}

/// Whether `error` means the connection it happened on is gone or unusable: it is closed
/// instead of going back to the pool, and the operation is tried again on another one.
pub(super) fn breaks_connection(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(_) => sqlstate(error).is_some_and(|code| {
            code.starts_with(code::CONNECTION_CLASS)
                || (code.starts_with(code::SHUTDOWN_CLASS) && code != code::QUERY_CANCELED)
        }),
        _ => false,
    }
}

/// Whether `error` is a lock wait that ran past `lock_timeout`: another transaction holds the
/// row, which says nothing about the server's health.
pub(super) fn lock_timed_out(error: &sqlx::Error) -> bool {
    sqlstate(error).as_deref() == Some(code::LOCK_NOT_AVAILABLE)
}

/// Whether the server refused the credentials or the database: a configuration error.
pub(super) fn refused(error: &sqlx::Error) -> bool {
    sqlstate(error)
        .is_some_and(|code| code.starts_with(code::AUTH_CLASS) || code == code::NO_DATABASE)
}

/// A sqlx error as a store error of the right kind.
pub(super) fn store_error(error: sqlx::Error, store: &str) -> StoreError {
    let kind = match &error {
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::PoolClosed => {
            StoreErrorKind::Unavailable
        }
        sqlx::Error::PoolTimedOut => StoreErrorKind::Timeout,
        sqlx::Error::Protocol(_)
        | sqlx::Error::Decode(_)
        | sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::ColumnIndexOutOfBounds { .. }
        | sqlx::Error::TypeNotFound { .. } => StoreErrorKind::Protocol,
        sqlx::Error::Database(_) => match sqlstate(&error).as_deref() {
            Some(code::QUERY_CANCELED) => StoreErrorKind::Timeout,
            Some(code) if breaks_connection(&error) || code == "57P03" => {
                StoreErrorKind::Unavailable
            }
            _ => StoreErrorKind::Other,
        },
        _ => StoreErrorKind::Other,
    };
    StoreError::new(kind, format!("PostgreSQL at {store} failed")).with_source(error)
}

/// The store error of an operation that did not finish in time.
pub(super) fn timed_out(store: &str, within: Duration, setting: &str) -> StoreError {
    StoreError::new(
        StoreErrorKind::Timeout,
        format!("PostgreSQL at {store} did not answer within {within:?} ({setting})"),
    )
}
