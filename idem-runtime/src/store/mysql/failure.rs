//! sqlx errors as [`StoreError`]s (and, when the store connects, as [`Error`]s), by the
//! server's error numbers.

use std::time::Duration;

use sqlx::mysql::MySqlDatabaseError;

use crate::error::{Error, StoreError, StoreErrorKind};

/// The server's error numbers this store tells apart (the same in MySQL and MariaDB).
pub(super) mod code {
    /// `ER_DBACCESS_DENIED_ERROR`: the user may not use the database.
    pub(crate) const DB_ACCESS_DENIED: u16 = 1044;
    /// `ER_ACCESS_DENIED_ERROR`: wrong user or password.
    pub(crate) const ACCESS_DENIED: u16 = 1045;
    /// `ER_BAD_DB_ERROR`: the database does not exist.
    pub(crate) const NO_DATABASE: u16 = 1049;
    /// `ER_SERVER_SHUTDOWN`.
    pub(crate) const SHUTDOWN: u16 = 1053;
    /// `ER_DUP_ENTRY`: an insert met a row with the same key.
    pub(crate) const DUPLICATE: u16 = 1062;
    /// `ER_NO_SUCH_TABLE`.
    pub(crate) const NO_TABLE: u16 = 1146;
    /// `ER_LOCK_WAIT_TIMEOUT`: a lock wait ran past `innodb_lock_wait_timeout`; only the
    /// statement is rolled back (unless the server runs with `innodb_rollback_on_timeout`).
    pub(crate) const LOCK_WAIT_TIMEOUT: u16 = 1205;
    /// `ER_LOCK_DEADLOCK`: InnoDB chose this transaction as a deadlock's victim and rolled it
    /// back whole.
    pub(crate) const DEADLOCK: u16 = 1213;
    /// `ER_CONNECTION_KILLED` (MariaDB).
    pub(crate) const KILLED: u16 = 1927;
    /// `ER_LOCK_NOWAIT` (MySQL 8: a `NOWAIT` read met a lock).
    pub(crate) const LOCK_NOWAIT: u16 = 3572;
}

/// The server's error number of `error`, if it is the server's.
pub(super) fn number(error: &sqlx::Error) -> Option<u16> {
    match error {
        sqlx::Error::Database(db) => db
            .try_downcast_ref::<MySqlDatabaseError>()
            .map(MySqlDatabaseError::number),
        _ => None,
    }
}

/// Whether `error` is a lock wait that ran out: another transaction holds the row, which says
/// nothing about the server's health.
pub(super) fn lock_timed_out(error: &sqlx::Error) -> bool {
    matches!(
        number(error),
        Some(code::LOCK_WAIT_TIMEOUT | code::LOCK_NOWAIT)
    )
}

/// Whether `error` is an insert that met a row with the same key.
pub(super) fn duplicate(error: &sqlx::Error) -> bool {
    number(error) == Some(code::DUPLICATE)
}

/// Whether `error` means the connection it happened on is gone or unusable.
pub(super) fn breaks_connection(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::Protocol(_) => true,
        _ => matches!(number(error), Some(code::SHUTDOWN | code::KILLED)),
    }
}

/// Whether the server refused the credentials or the database: a configuration error.
pub(super) fn refused(error: &sqlx::Error) -> bool {
    matches!(
        number(error),
        Some(code::ACCESS_DENIED | code::DB_ACCESS_DENIED | code::NO_DATABASE)
    )
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
        sqlx::Error::Database(_) if lock_timed_out(&error) => StoreErrorKind::Timeout,
        sqlx::Error::Database(_) if breaks_connection(&error) => StoreErrorKind::Unavailable,
        _ => StoreErrorKind::Other,
    };
    StoreError::new(kind, format!("MySQL at {store} failed")).with_source(error)
}

/// The error of a store that could not connect or check its table.
pub(super) fn connect_error(error: sqlx::Error, store: &str) -> Error {
    if refused(&error) {
        return Error::Config(format!(
            "MySQL at {store} refused the connection ({error}); check the user, password and database in the store URL"
        ));
    }
    Error::Connect {
        store: store.to_owned(),
        source: store_error(error, store),
    }
}

/// The store error of an operation that did not finish in time.
pub(super) fn timed_out(store: &str, within: Duration) -> StoreError {
    StoreError::new(
        StoreErrorKind::Timeout,
        format!("MySQL at {store} did not answer within {within:?} (statement_timeout)"),
    )
}

/// `ER_PARSE_ERROR`: a statement the server does not know (MySQL's answer to MariaDB's
/// `SET STATEMENT … FOR`).
pub(super) fn syntax(error: &sqlx::Error) -> bool {
    number(error) == Some(1064)
}
