//! The store's table: its public SQL, its checked names, and its check (or creation) when the
//! store connects.

use sqlx::postgres::PgConnection;
use sqlx::{Connection, PgPool, Row, SqlSafeStr};

use super::failure;
use super::sent::{Value, send};
use crate::error::Error;

/// The SQL that creates the store's table and its index on `expires_at`, for the default
/// schema and table (`"public"."idem_records"`); the same text is the migration file
/// `idem-runtime/migrations/20261130000000_idem_records.sql` (a folder `sqlx migrate` accepts).
/// [`PostgresOptions::migration`](super::PostgresOptions::migration) gives it for other names.
///
/// It holds two statements (`CREATE TABLE IF NOT EXISTS`, `CREATE INDEX IF NOT EXISTS`), so
/// run it with [`sqlx::raw_sql`] (the simple query protocol, which takes several statements),
/// or as a file of the application's own migrations (`sqlx migrate run`, `sqlx::migrate!`,
/// `sqlx::migrate::Migrator`); not with `sqlx::query`, which prepares one statement and
/// fails with "cannot insert multiple commands into a prepared statement". Running it again
/// changes nothing. Inside a transaction it creates the table in that transaction:
///
/// ```no_run
/// # use idem_runtime as idem;
/// # async fn demo(pool: sqlx::PgPool) -> Result<(), sqlx::Error> {
/// sqlx::raw_sql(idem::postgres::MIGRATION).execute(&pool).await?;
/// # Ok(())
/// # }
/// ```
pub const MIGRATION: &str = include_str!("../../../migrations/20261130000000_idem_records.sql");

/// The table name of [`MIGRATION`], quoted with its schema.
const DEFAULT_TABLE: &str = r#""public"."idem_records""#;
/// The index name of [`MIGRATION`].
const DEFAULT_INDEX: &str = r#""idem_records_expires_at""#;

/// The longest identifier PostgreSQL keeps (longer ones are truncated).
const MAX_IDENTIFIER: usize = 63;
/// What the index name adds to the table name.
const INDEX_SUFFIX: &str = "_expires_at";

/// A checked schema and table name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Table {
    pub(super) schema: String,
    pub(super) name: String,
}

impl Table {
    /// Checks the names: not empty, no NUL, short enough to stay distinct with the index's
    /// suffix.
    pub(super) fn new(schema: &str, name: &str) -> Result<Table, String> {
        for (what, value, limit) in [
            ("schema", schema, MAX_IDENTIFIER),
            ("table", name, MAX_IDENTIFIER - INDEX_SUFFIX.len()),
        ] {
            if value.is_empty() || value.contains('\0') || value.len() > limit {
                return Err(format!(
                    "the PostgreSQL {what} name `{}` is not valid; expected 1 to {limit} bytes without NUL",
                    value.escape_debug()
                ));
            }
        }
        Ok(Table {
            schema: schema.to_owned(),
            name: name.to_owned(),
        })
    }

    /// `"schema"."table"`.
    pub(super) fn qualified(&self) -> String {
        format!("{}.{}", quote(&self.schema), quote(&self.name))
    }

    /// The `NOTIFY` channel of completions and releases on this table: its name.
    pub(super) fn channel(&self) -> &str {
        &self.name
    }

    /// [`MIGRATION`] for this table.
    pub(super) fn migration(&self) -> String {
        MIGRATION.replace(DEFAULT_TABLE, &self.qualified()).replace(
            DEFAULT_INDEX,
            &quote(&format!("{}{INDEX_SUFFIX}", self.name)),
        )
    }
}

/// A quoted identifier.
fn quote(identifier: &str) -> String {
    format!("\"{}\"", identifier.replace('"', "\"\""))
}

/// Checks that the table exists with the store's columns, creating it if allowed.
pub(super) async fn prepare(
    pool: &PgPool,
    describe: &str,
    table: &Table,
    create: bool,
    inline: bool,
) -> Result<(), Error> {
    let failed = |error: sqlx::Error| {
        if failure::refused(&error) {
            Error::Config(format!(
                "PostgreSQL at {describe} refused the connection ({error}); check the user, password and database in the store URL"
            ))
        } else {
            Error::Connect {
                store: describe.to_owned(),
                source: failure::store_error(error, describe),
            }
        }
    };
    // One connection of its own first: the pool retries a refused connection until its
    // timeout, and the server's own answer (refused, wrong password) is the better error.
    let probe = PgConnection::connect_with(&pool.connect_options())
        .await
        .map_err(failed)?;
    let _ = probe.close().await;
    let qualified = table.qualified();
    let exists = |pool: PgPool| {
        let qualified = qualified.clone();
        async move {
            let exists = "SELECT to_regclass($1) IS NOT NULL".into_sql_str();
            send(&exists, &[Value::Text(&qualified)], inline)
                .fetch_one(&pool)
                .await?
                .try_get::<bool, _>(0)
        }
    };
    let migration = table.migration();
    if !exists(pool.clone()).await.map_err(failed)? {
        if !create {
            return Err(Error::Config(format!(
                "the table {} does not exist in PostgreSQL at {describe}, and creating it is off (create_table, IDEM_PG_CREATE_TABLE=false); create it with:\n{migration}",
                table.qualified()
            )));
        }
        if let Err(error) = sqlx::raw_sql(sqlx::AssertSqlSafe(migration.clone()))
            .execute(pool)
            .await
        {
            // Another process may have created it at the same moment.
            if !exists(pool.clone()).await.map_err(failed)? {
                return Err(Error::Config(format!(
                    "cannot create the table {} in PostgreSQL at {describe} ({error}); create it with:\n{migration}",
                    table.qualified()
                )));
            }
        }
    }
    let columns = format!(
        "SELECT key, state, token, fingerprint, payload, expires_at FROM {} LIMIT 0",
        table.qualified()
    );
    if let Err(error) = sqlx::raw_sql(sqlx::AssertSqlSafe(columns))
        .execute(pool)
        .await
    {
        return Err(match error {
            sqlx::Error::Database(_) if !failure::breaks_connection(&error) => {
                Error::Config(format!(
                    "the table {} in PostgreSQL at {describe} is not idem's ({error}); it must be as created by:\n{migration}",
                    table.qualified()
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
        let table = Table::new("my schema", "t\"x").unwrap();
        assert_eq!(table.qualified(), r#""my schema"."t""x""#);
        assert!(Table::new("", "t").is_err());
        assert!(Table::new("s", "a\0b").is_err());
        assert!(Table::new("s", &"t".repeat(60)).is_err());
    }

    #[test]
    fn the_migration_is_rewritten_for_other_names() {
        let default = Table::new("public", "idem_records").unwrap();
        assert_eq!(default.migration(), MIGRATION);
        let other = Table::new("billing", "keys").unwrap();
        let sql = other.migration();
        assert!(
            sql.contains(r#"CREATE TABLE IF NOT EXISTS "billing"."keys" ("#),
            "{sql}"
        );
        assert!(
            sql.contains(r#""keys_expires_at" ON "billing"."keys""#),
            "{sql}"
        );
        assert!(!sql.contains("idem_records\""), "{sql}");
    }
}
