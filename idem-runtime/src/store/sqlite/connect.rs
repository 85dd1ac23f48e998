//! What [`SqliteStore::connect`](super::SqliteStore::connect) opens: the URL read, and the
//! pools of the store's reads and writes with their settings.

use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use super::options::SqliteOptions;
use super::table::Table;
use crate::error::Error;

/// The URLs this store takes, for its error messages.
const URL_FORMS: &str = "sqlite://path/to/idem.db (relative to the working directory), sqlite:///absolute/path/idem.db or sqlite::memory:";

/// The pools of a store that opened its database itself, and its description.
pub(super) struct Pools {
    /// Reads: `pool_size` connections.
    pub(super) reads: SqlitePool,
    /// Writes: one connection of their own, so that the writes of this process queue in the
    /// pool rather than in SQLite's busy loop.
    pub(super) writes: SqlitePool,
    pub(super) describe: String,
}

impl Pools {
    /// The pools of the database at `url`, opened lazily: a file in WAL mode, with `synchronous`
    /// and `busy_timeout` as `options` say, created if missing; or one connection to an
    /// in-memory database, kept for as long as the store (the database lives in it).
    pub(super) fn open(url: &str, options: &SqliteOptions, table: &Table) -> Result<Pools, Error> {
        let memory = in_memory(url)?;
        let parsed: SqliteConnectOptions = url.parse().map_err(|e| {
            Error::Config(format!(
                "the SQLite URL `{url}` is not valid ({e}); expected {URL_FORMS}"
            ))
        })?;
        let connect = parsed.busy_timeout(options.busy_timeout);
        // sqlx counts connections in a u32: a larger pool_size is as many as it can keep.
        let pool = |size: usize| {
            SqlitePoolOptions::new()
                .max_connections(u32::try_from(size).unwrap_or(u32::MAX))
                .acquire_timeout(options.connect_timeout)
                // No ping before each statement: a connection to a file does not break.
                .test_before_acquire(false)
        };
        if memory {
            let only = pool(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
                .connect_lazy_with(connect);
            return Ok(Pools {
                reads: only.clone(),
                writes: only,
                describe: format!("sqlite::memory: ({})", table.quoted()),
            });
        }
        let synchronous = if options.full_sync {
            SqliteSynchronous::Full
        } else {
            SqliteSynchronous::Normal
        };
        let connect = connect
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(synchronous);
        Ok(Pools {
            describe: describe(&connect, table),
            reads: pool(options.pool_size).connect_lazy_with(connect.clone()),
            writes: pool(1).connect_lazy_with(connect),
        })
    }
}

/// Whether a store URL names an in-memory database; an error for a URL that is not SQLite's.
pub(super) fn in_memory(url: &str) -> Result<bool, Error> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .ok_or_else(|| {
            Error::Config(format!("`{url}` is not a SQLite URL; expected {URL_FORMS}"))
        })?;
    let (database, params) = rest.split_once('?').unwrap_or((rest, ""));
    let memory = database == ":memory:" || params.split('&').any(|p| p == "mode=memory");
    if database.is_empty() && !memory {
        return Err(Error::Config(format!(
            "the SQLite URL `{url}` names no file; expected {URL_FORMS}"
        )));
    }
    Ok(memory)
}

/// `sqlite://path ("table")`: the file as the store opened it.
pub(super) fn describe(options: &SqliteConnectOptions, table: &Table) -> String {
    format!(
        "sqlite://{} ({})",
        options.get_filename().display(),
        table.quoted()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_sqlites_and_name_a_file_or_memory() {
        assert!(in_memory("sqlite::memory:").unwrap());
        assert!(in_memory("sqlite://:memory:").unwrap());
        assert!(in_memory("sqlite://?mode=memory").unwrap());
        assert!(!in_memory("sqlite://idem.db").unwrap());
        assert!(!in_memory("sqlite:///var/lib/idem.db?mode=rwc").unwrap());
        for bad in ["postgres://h/db", "sqlite://", "idem.db"] {
            let error = in_memory(bad).unwrap_err().to_string();
            assert!(error.contains("sqlite://path/to/idem.db"), "{bad}: {error}");
        }
    }
}
