//! sqlx errors as [`StoreError`]s (and, when the store opens, as [`Error`]s), by SQLite's result
//! codes.

use std::time::Duration;

use crate::error::{Error, StoreError, StoreErrorKind};

/// SQLite's primary result codes this store tells apart (an extended code's low byte).
mod code {
    /// `SQLITE_PERM`: the file's permissions refuse the access.
    pub(super) const PERM: i32 = 3;
    /// `SQLITE_BUSY`: another connection held the lock past `busy_timeout`.
    pub(super) const BUSY: i32 = 5;
    /// `SQLITE_LOCKED`: a table is locked within a shared cache.
    pub(super) const LOCKED: i32 = 6;
    /// `SQLITE_READONLY`: the database cannot be written.
    pub(super) const READONLY: i32 = 8;
    /// `SQLITE_IOERR`: the disk failed.
    pub(super) const IOERR: i32 = 10;
    /// `SQLITE_CORRUPT`: the file is damaged.
    pub(super) const CORRUPT: i32 = 11;
    /// `SQLITE_FULL`: the disk is full.
    pub(super) const FULL: i32 = 13;
    /// `SQLITE_CANTOPEN`: the file cannot be opened (a missing directory, permissions).
    pub(super) const CANTOPEN: i32 = 14;
    /// `SQLITE_NOTADB`: the file is not a database.
    pub(super) const NOTADB: i32 = 26;
}

/// The primary result code of a database error.
fn primary(error: &sqlx::Error) -> Option<i32> {
    match error {
        sqlx::Error::Database(db) => db.code()?.parse::<i32>().ok().map(|code| code & 0xff),
        _ => None,
    }
}

/// Whether `error` is a lock another connection held for longer than `busy_timeout`.
pub(super) fn locked(error: &sqlx::Error) -> bool {
    matches!(primary(error), Some(code::BUSY | code::LOCKED))
}

/// Whether `error` is SQLite's refusal of a statement on a table that does not exist (found
/// when it prepares the statement: the transaction it was sent in is left as it was).
pub(super) fn no_such_table(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(db) => db.message().starts_with("no such table"),
        _ => false,
    }
}

/// A sqlx error as a store error of the right kind. `busy_timeout` is the store's, if it set it.
pub(super) fn store_error(
    error: sqlx::Error,
    store: &str,
    busy_timeout: Option<Duration>,
) -> StoreError {
    if locked(&error) {
        let within = busy_timeout.map_or_else(String::new, |t| format!(" ({t:?})"));
        return StoreError::new(
            StoreErrorKind::Timeout,
            format!(
                "the SQLite database {store} stayed locked by another connection for longer than busy_timeout{within}"
            ),
        )
        .with_source(error);
    }
    let kind = match &error {
        sqlx::Error::Io(_) | sqlx::Error::PoolClosed | sqlx::Error::WorkerCrashed => {
            StoreErrorKind::Unavailable
        }
        sqlx::Error::PoolTimedOut => StoreErrorKind::Timeout,
        sqlx::Error::Protocol(_)
        | sqlx::Error::Decode(_)
        | sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::ColumnIndexOutOfBounds { .. }
        | sqlx::Error::TypeNotFound { .. } => StoreErrorKind::Protocol,
        sqlx::Error::Database(_) => match primary(&error) {
            Some(code::FULL) => StoreErrorKind::Full,
            Some(code::IOERR | code::CANTOPEN | code::PERM | code::READONLY) => {
                StoreErrorKind::Unavailable
            }
            Some(code::CORRUPT | code::NOTADB) => StoreErrorKind::Protocol,
            _ => StoreErrorKind::Other,
        },
        _ => StoreErrorKind::Other,
    };
    StoreError::new(kind, format!("the SQLite database {store} failed")).with_source(error)
}

/// An error met while opening the store: a file that cannot be opened as a database is a
/// configuration error (the path in the URL); anything else, a connection error.
pub(super) fn open_error(error: sqlx::Error, store: &str) -> Error {
    match primary(&error) {
        Some(code::CANTOPEN | code::NOTADB | code::PERM | code::READONLY) => {
            Error::Config(format!(
                "cannot open the SQLite database {store} ({error}); check the path in the store URL: its directory must exist and the file must be a writable SQLite database"
            ))
        }
        _ => Error::Connect {
            store: store.to_owned(),
            source: store_error(error, store, None),
        },
    }
}

/// The store error of an operation that did not finish in time.
pub(super) fn timed_out(store: &str, within: Duration, setting: &str) -> StoreError {
    StoreError::new(
        StoreErrorKind::Timeout,
        format!("the SQLite database {store} did not answer within {within:?} ({setting})"),
    )
}
