//! The store's table: its public SQL, its checked name, and its check (or creation) when the
//! store connects.

use sqlx::MySqlPool;
use sqlx::mysql::MySqlConnection;
use sqlx::{Connection, Executor};

use super::failure;
use crate::error::Error;

/// The SQL that creates the store's table (with its index on `expires_at`), for the default
/// name (`idem_records`, in the connection's database); the same text is the migration file
/// `idem-runtime/migrations/mysql/20261203000000_idem_records.sql` (a folder `sqlx migrate`
/// accepts). [`MySqlOptions::migration`](super::MySqlOptions::migration) gives it for another
/// name.
///
/// One statement, `CREATE TABLE IF NOT EXISTS … ENGINE = InnoDB`: run it with
/// [`sqlx::raw_sql`] or `sqlx::query`, or as a file of the application's own migrations.
/// Running it again changes nothing. In MySQL a `CREATE TABLE` commits the transaction it is
/// run in: run it outside the application's transactions. `expires_at` is in milliseconds
/// since the Unix epoch, by the server's clock (`UTC_TIMESTAMP(6)`); `key` is `VARBINARY`, so
/// keys are compared byte by byte (no collation folds two keys into one).
///
/// ```no_run
/// # use idem_runtime as idem;
/// # async fn demo(pool: sqlx::MySqlPool) -> Result<(), sqlx::Error> {
/// sqlx::raw_sql(idem::mysql::MIGRATION).execute(&pool).await?;
/// # Ok(())
/// # }
/// ```
pub const MIGRATION: &str =
    include_str!("../../../migrations/mysql/20261203000000_idem_records.sql");

/// The table name of [`MIGRATION`], quoted.
const DEFAULT_TABLE: &str = "`idem_records`";
/// The index name of [`MIGRATION`].
const DEFAULT_INDEX: &str = "`idem_records_expires_at`";
/// What the index name adds to the table name.
const INDEX_SUFFIX: &str = "_expires_at";
/// The longest identifier MySQL keeps.
const MAX_IDENTIFIER: usize = 64;

/// A checked table name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Table {
    pub(super) name: String,
}

impl Table {
    /// Checks the name: not empty, no NUL, short enough for the index's name too.
    pub(super) fn new(name: &str) -> Result<Table, String> {
        let limit = MAX_IDENTIFIER - INDEX_SUFFIX.len();
        if name.is_empty() || name.contains('\0') || name.len() > limit || name.ends_with(' ') {
            return Err(format!(
                "the MySQL table name `{}` is not valid; expected 1 to {limit} bytes without NUL, not ending with a space",
                name.escape_debug()
            ));
        }
        Ok(Table {
            name: name.to_owned(),
        })
    }

    /// `` `table` ``.
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
    format!("`{}`", identifier.replace('`', "``"))
}

/// Checks that the table exists with the store's columns, creating it if allowed.
pub(super) async fn prepare(
    pool: &MySqlPool,
    describe: &str,
    table: &Table,
    create: bool,
) -> Result<(), Error> {
    let failed = |error: sqlx::Error| failure::connect_error(error, describe);
    // One connection of its own first: the pool retries a refused connection until its
    // timeout, and the server's own answer (refused, wrong password) is the better error.
    let probe = MySqlConnection::connect_with(&pool.connect_options())
        .await
        .map_err(failed)?;
    let _ = probe.close().await;
    let exists = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM information_schema.tables \
             WHERE table_schema = DATABASE() AND table_name = ?",
        )
        .bind(&table.name)
        .fetch_one(pool)
        .await
        .map(|n| n > 0)
    };
    let migration = table.migration();
    if !exists().await.map_err(failed)? {
        if !create {
            return Err(Error::Config(format!(
                "the table {} does not exist in MySQL at {describe}, and creating it is off (create_table); create it with:\n{migration}",
                table.quoted()
            )));
        }
        // `IF NOT EXISTS`: another process creating it at the same moment is harmless.
        if let Err(error) = pool.execute(sqlx::AssertSqlSafe(migration.clone())).await {
            if failure::breaks_connection(&error) {
                return Err(failed(error));
            }
            return Err(Error::Config(format!(
                "cannot create the table {} in MySQL at {describe} ({error}); create it with:\n{migration}",
                table.quoted()
            )));
        }
    }
    let columns = format!(
        "SELECT `key`, `state`, `token`, `fingerprint`, `payload`, `expires_at` FROM {} LIMIT 0",
        table.quoted()
    );
    if let Err(error) = pool.execute(sqlx::AssertSqlSafe(columns)).await {
        return Err(match error {
            sqlx::Error::Database(_) if !failure::breaks_connection(&error) => {
                Error::Config(format!(
                    "the table {} in MySQL at {describe} is not idem's ({error}); it must be as created by:\n{migration}",
                    table.quoted()
                ))
            }
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
        let table = Table::new("t`x").unwrap();
        assert_eq!(table.quoted(), "`t``x`");
        assert!(Table::new("").is_err());
        assert!(Table::new("a\0b").is_err());
        assert!(Table::new(&"t".repeat(60)).is_err());
    }

    #[test]
    fn the_migration_is_rewritten_for_other_names() {
        let default = Table::new("idem_records").unwrap();
        assert_eq!(default.migration(), MIGRATION);
        let sql = Table::new("keys").unwrap().migration();
        assert!(sql.contains("CREATE TABLE IF NOT EXISTS `keys` ("), "{sql}");
        assert!(sql.contains("INDEX `keys_expires_at`"), "{sql}");
        assert!(!sql.contains("idem_records`"), "{sql}");
    }
}
