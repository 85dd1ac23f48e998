//! The store's table: its public SQL, its checked name, and its check (or creation) when the
//! store opens.

use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::{Sqlite, SqlitePool};
use tokio::time::Instant;

use super::failure;
use crate::error::Error;

/// The SQL that creates the store's table and its index on `expires_at`, for the default table
/// (`"idem_records"`); the same text is the migration file
/// `idem-runtime/migrations/sqlite/20261201000000_idem_records.sql` (a folder `sqlx migrate`
/// accepts). [`SqliteOptions::migration`](super::SqliteOptions::migration) gives it for another
/// name.
///
/// It holds two statements (`CREATE TABLE IF NOT EXISTS … STRICT`, `CREATE INDEX IF NOT
/// EXISTS`): run it with [`sqlx::raw_sql`], or as a file of the application's own migrations
/// (`sqlx migrate run`, `sqlx::migrate!`). Running it again changes nothing. `expires_at` is in
/// milliseconds since the Unix epoch, by SQLite's clock (`unixepoch('subsec')`); a `STRICT`
/// table needs SQLite 3.37 or later to be read (the store's own is 3.51, compiled in).
///
/// ```no_run
/// # use idem_runtime as idem;
/// # async fn demo(pool: sqlx::SqlitePool) -> Result<(), sqlx::Error> {
/// sqlx::raw_sql(idem::sqlite::MIGRATION).execute(&pool).await?;
/// # Ok(())
/// # }
/// ```
pub const MIGRATION: &str =
    include_str!("../../../migrations/sqlite/20261201000000_idem_records.sql");

/// The table name of [`MIGRATION`], quoted.
const DEFAULT_TABLE: &str = r#""idem_records""#;
/// The index name of [`MIGRATION`].
const DEFAULT_INDEX: &str = r#""idem_records_expires_at""#;
/// What the index name adds to the table name.
const INDEX_SUFFIX: &str = "_expires_at";

/// How long opening waits between attempts while another connection turns a new file into WAL
/// mode (which takes a lock that SQLite's busy timeout does not wait for).
const OPEN_RETRY: Duration = Duration::from_millis(10);

/// A checked table name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Table {
    pub(super) name: String,
}

impl Table {
    /// Checks the name: not empty, no NUL, not one of SQLite's own (`sqlite_…`).
    pub(super) fn new(name: &str) -> Result<Table, String> {
        if name.is_empty()
            || name.contains('\0')
            || name.len() > 128
            || name.to_ascii_lowercase().starts_with("sqlite_")
        {
            return Err(format!(
                "the SQLite table name `{}` is not valid; expected 1 to 128 bytes without NUL, not starting with `sqlite_`",
                name.escape_debug()
            ));
        }
        Ok(Table {
            name: name.to_owned(),
        })
    }

    /// `"table"`.
    pub(super) fn quoted(&self) -> String {
        quote(&self.name)
    }

    /// [`MIGRATION`] for this table.
    pub(super) fn migration(&self) -> String {
        MIGRATION.replace(DEFAULT_TABLE, &self.quoted()).replace(
            DEFAULT_INDEX,
            &quote(&format!("{}{INDEX_SUFFIX}", self.name)),
        )
    }
}

/// A quoted identifier.
fn quote(identifier: &str) -> String {
    format!("\"{}\"", identifier.replace('"', "\"\""))
}

/// A connection of `pool` to a database that may be new: opening it sets WAL mode, which fails
/// at once (`SQLITE_BUSY`) while another process does the same; tried again until `timeout`.
async fn first_connection(
    pool: &SqlitePool,
    describe: &str,
    timeout: Duration,
) -> Result<PoolConnection<Sqlite>, Error> {
    let deadline = Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, pool.acquire()).await {
            Ok(Ok(conn)) => return Ok(conn),
            Ok(Err(error)) if failure::locked(&error) && Instant::now() < deadline => {
                tokio::time::sleep(OPEN_RETRY).await;
            }
            Ok(Err(error)) => return Err(failure::open_error(error, describe)),
            Err(_) => {
                return Err(Error::Connect {
                    store: describe.to_owned(),
                    source: failure::timed_out(describe, timeout, "connect_timeout"),
                });
            }
        }
    }
}

/// Opens the database, and checks that the table exists with the store's columns, creating it
/// if allowed.
pub(super) async fn prepare(
    pool: &SqlitePool,
    describe: &str,
    table: &Table,
    create: bool,
    timeout: Duration,
) -> Result<(), Error> {
    let mut conn = first_connection(pool, describe, timeout).await?;
    let failed = |error: sqlx::Error| failure::open_error(error, describe);
    let exists = sqlx::query_scalar::<_, i64>(
        "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = ?1",
    )
    .bind(&table.name)
    .fetch_one(&mut *conn)
    .await
    .map_err(failed)?
        > 0;
    let migration = table.migration();
    if !exists {
        if !create {
            return Err(Error::Config(format!(
                "the table {} does not exist in the SQLite database {describe}, and creating it is off (create_table); create it with:\n{migration}",
                table.quoted()
            )));
        }
        // `IF NOT EXISTS`: another process creating it at the same moment is harmless.
        sqlx::raw_sql(sqlx::AssertSqlSafe(migration.clone()))
            .execute(&mut *conn)
            .await
            .map_err(|error| {
                if failure::locked(&error) {
                    failed(error)
                } else {
                    Error::Config(format!(
                        "cannot create the table {} in the SQLite database {describe} ({error}); create it with:\n{migration}",
                        table.quoted()
                    ))
                }
            })?;
    }
    let columns = format!(
        "SELECT key, state, token, fingerprint, payload, expires_at FROM {} LIMIT 0",
        table.quoted()
    );
    if let Err(error) = sqlx::raw_sql(sqlx::AssertSqlSafe(columns))
        .execute(&mut *conn)
        .await
    {
        return Err(match error {
            sqlx::Error::Database(_) if !failure::locked(&error) => Error::Config(format!(
                "the table {} in the SQLite database {describe} is not idem's ({error}); it must be as created by:\n{migration}",
                table.quoted()
            )),
            error => failed(error),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_and_quoted() {
        let table = Table::new("t\"x").unwrap();
        assert_eq!(table.quoted(), r#""t""x""#);
        assert!(Table::new("").is_err());
        assert!(Table::new("a\0b").is_err());
        assert!(Table::new("sqlite_master").is_err());
        assert!(Table::new(&"t".repeat(200)).is_err());
    }

    #[test]
    fn the_migration_is_rewritten_for_other_names() {
        let default = Table::new("idem_records").unwrap();
        assert_eq!(default.migration(), MIGRATION);
        let sql = Table::new("keys").unwrap().migration();
        assert!(
            sql.contains(r#"CREATE TABLE IF NOT EXISTS "keys" ("#),
            "{sql}"
        );
        assert!(sql.contains(r#""keys_expires_at" ON "keys""#), "{sql}");
        assert!(!sql.contains("idem_records\""), "{sql}");
    }
}
