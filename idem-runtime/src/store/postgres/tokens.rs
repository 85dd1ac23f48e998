//! Server-issued tokens on PostgreSQL: a table of their own beside the records
//! (`<table>_tokens`, see [`TOKENS_MIGRATION`]), one statement per operation:
//!
//! | operation | statement |
//! |---|---|
//! | issue | `WITH swept AS (DELETE a few expired rows), made AS (INSERT … ON CONFLICT DO NOTHING RETURNING 1) SELECT count(*) FROM made` |
//! | issue within a bound | `WITH swept AS (…), head AS (INSERT the scope's row ON CONFLICT DO UPDATE SET issued = live expiries ‖ new WHERE live expiries < bound RETURNING 1), made AS (INSERT … SELECT … FROM head RETURNING 1) SELECT count(*) FROM made` |
//! | redeem | `WITH seen AS (SELECT the live row), took AS (UPDATE … SET redeemed WHERE live AND NOT redeemed RETURNING 1) SELECT count(took), count(seen)` |
//! | count (operators) | `SELECT count(*) FILTER (…) … LIMIT` over the prefix's range |
//!
//! Redeeming: `took` updates the row only while it is live and not redeemed; a concurrent
//! redemption waits on the row's lock and then sees the row redeemed (PostgreSQL checks an
//! `UPDATE`'s condition again on the row's newest version), so exactly one takes it. `seen`
//! tells a token redeemed before (a row, nothing taken) from an unknown one (no row).
//!
//! The bound: the upsert of the scope's own row (empty token) takes its row lock and works on
//! its newest version, even one committed after the statement began, so concurrent issues of
//! one scope count each other exactly (a `count(*)` of the scope's rows would read the
//! statement's snapshot and let two of them pass).

use std::time::Duration;

use sqlx::postgres::PgExecutor;
use sqlx::{AssertSqlSafe, Row, SqlSafeStr, SqlStr};

use super::sent::{Sent, Value, send};
use super::sql::{millis, past};
use super::table::Table;
use crate::store::{Issue, Redemption, Stats, TokenKey};

/// The SQL that creates the tokens' table and its index, for the default names
/// (`"public"."idem_records_tokens"`); the same text is the migration file
/// `idem-runtime/migrations/20261203000000_idem_tokens.sql`. For another schema or table of
/// records, the tokens' table is `<table>_tokens` in the same schema: the text with the names
/// replaced. `PostgresStore::connect` creates it when it creates tables (`create_table`).
pub const TOKENS_MIGRATION: &str =
    include_str!("../../../migrations/20261203000000_idem_tokens.sql");

const DEFAULT_TABLE: &str = r#""public"."idem_records_tokens""#;
const DEFAULT_INDEX: &str = r#""idem_records_tokens_exp""#;

/// How many expired rows of other tokens an issue deletes: each issue adds one row, so the
/// expired ones never pile up while tokens are issued.
const SWEEP: i64 = 2;

fn quote(identifier: &str) -> String {
    format!("\"{}\"", identifier.replace('"', "\"\""))
}

/// The tokens' table of the records' `table`: its quoted name and its migration.
pub(super) struct TokenTable {
    qualified: String,
    migration: String,
}

impl TokenTable {
    pub(super) fn of(table: &Table) -> TokenTable {
        let name = format!("{}_tokens", table.name);
        let qualified = format!("{}.{}", quote(&table.schema), quote(&name));
        let migration = TOKENS_MIGRATION
            .replace(DEFAULT_TABLE, &qualified)
            .replace(DEFAULT_INDEX, &quote(&format!("{name}_exp")));
        TokenTable {
            qualified,
            migration,
        }
    }

    /// The SQL that creates it.
    pub(super) fn migration(&self) -> &str {
        &self.migration
    }

    /// The store error of a token operation on a database without the table.
    pub(super) fn missing(&self, describe: &str) -> crate::error::StoreError {
        crate::error::StoreError::new(
            crate::error::StoreErrorKind::Other,
            format!(
                "the tokens' table {} does not exist in PostgreSQL at {describe}; create it with:\n{}",
                self.qualified, self.migration
            ),
        )
    }
}

/// The statements of the tokens' table, built once per store.
pub(super) struct TokenStatements {
    /// Whether each is sent with its values written in (see `sent.rs`).
    inline: bool,
    issue: SqlStr,
    issue_bounded: SqlStr,
    redeem: SqlStr,
    count: SqlStr,
}

/// `$3` milliseconds from now, by the database's clock.
const IN_TTL: &str = "clock_timestamp() + $3 * interval '1 millisecond'";

impl TokenStatements {
    /// The statements of `tokens`, sent with their values written in when `inline`.
    pub(super) fn new(tokens: &TokenTable, inline: bool) -> TokenStatements {
        let t = &tokens.qualified;
        let sql = |text: String| AssertSqlSafe(text).into_sql_str();
        // `now()`, not `clock_timestamp()`: a stable value, so the index finds the rows. The
        // bounded issue leaves its own scope's row to its upsert (one statement cannot both
        // delete and update a row).
        let swept = |spare: &str| {
            format!(
                "swept AS (DELETE FROM {t} WHERE (scope, token) IN (\
                    SELECT scope, token FROM {t} WHERE expires_at < now() {spare} \
                    LIMIT {SWEEP} FOR UPDATE SKIP LOCKED) AND expires_at < now())"
            )
        };
        let made = |from: &str| {
            format!(
                "made AS (INSERT INTO {t} (scope, token, redeemed, expires_at) \
                    SELECT $1, $2, false, {IN_TTL} {from} ON CONFLICT DO NOTHING RETURNING 1) \
                 SELECT count(*) FROM made"
            )
        };
        let live = "ARRAY(SELECT e FROM unnest(h.issued) AS e WHERE e > clock_timestamp())";
        TokenStatements {
            inline,
            issue: sql(format!("WITH {}, {}", swept(""), made(""))),
            issue_bounded: sql(format!(
                "WITH {}, \
                 head AS (\
                    INSERT INTO {t} AS h (scope, token, redeemed, issued, expires_at) \
                    VALUES ($1, '', false, ARRAY[{IN_TTL}], {IN_TTL}) \
                    ON CONFLICT (scope, token) DO UPDATE \
                    SET issued = {live} || excluded.expires_at, \
                        expires_at = greatest(h.expires_at, excluded.expires_at) \
                    WHERE cardinality({live}) < $4 \
                    RETURNING 1), \
                 {}",
                swept("AND NOT (scope = $1 AND token = '')"),
                made("FROM head"),
            )),
            redeem: sql(format!(
                "WITH seen AS (\
                    SELECT redeemed FROM {t} \
                    WHERE scope = $1 AND token = $2 AND expires_at > clock_timestamp()), \
                 took AS (\
                    UPDATE {t} SET redeemed = true, expires_at = {IN_TTL} \
                    WHERE scope = $1 AND token = $2 AND NOT redeemed \
                    AND expires_at > clock_timestamp() RETURNING 1) \
                 SELECT (SELECT count(*) FROM took), (SELECT count(*) FROM seen)"
            )),
            count: sql(format!(
                "SELECT count(*) FILTER (WHERE NOT redeemed), count(*) FILTER (WHERE redeemed) \
                 FROM (SELECT redeemed FROM {t} \
                    WHERE scope >= $1 AND ($2::text IS NULL OR scope < $2) \
                    AND starts_with(scope, $1) AND token <> '' \
                    AND expires_at > clock_timestamp() LIMIT $3) AS live"
            )),
        }
    }
}

impl TokenStatements {
    /// `statement` with `values`, to send the way this store sends statements.
    fn send<'a>(&self, statement: &SqlStr, values: &[Value<'a>]) -> Sent<'a> {
        send(statement, values, self.inline)
    }
}

/// Whether `error` says the tokens' table does not exist (`undefined_table`).
pub(super) fn no_table(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.code().as_deref() == Some("42P01"))
}

pub(super) async fn issue<'e>(
    executor: impl PgExecutor<'e>,
    sql: &TokenStatements,
    token: &TokenKey,
    ttl: Duration,
    max_live: Option<u32>,
) -> Result<Issue, sqlx::Error> {
    let mut values = vec![
        Value::Text(token.group()),
        Value::Text(token.token()),
        Value::Int(millis(ttl)),
    ];
    let statement = match max_live {
        Some(max) => {
            values.push(Value::Int(i64::from(max)));
            &sql.issue_bounded
        }
        None => &sql.issue,
    };
    let made: i64 = sql
        .send(statement, &values)
        .fetch_one(executor)
        .await?
        .try_get(0)?;
    Ok(if made == 1 {
        Issue::Issued
    } else {
        Issue::Full
    })
}

pub(super) async fn redeem<'e>(
    executor: impl PgExecutor<'e>,
    sql: &TokenStatements,
    token: &TokenKey,
    keep: Duration,
) -> Result<Redemption, sqlx::Error> {
    let row = sql
        .send(
            &sql.redeem,
            &[
                Value::Text(token.group()),
                Value::Text(token.token()),
                Value::Int(millis(keep)),
            ],
        )
        .fetch_one(executor)
        .await?;
    let (took, seen): (i64, i64) = (row.try_get(0)?, row.try_get(1)?);
    Ok(match (took, seen) {
        (1, _) => Redemption::Valid,
        (_, 0) => Redemption::Unknown,
        _ => Redemption::Redeemed,
    })
}

/// Counts at most `limit` live tokens under `prefix` into `stats`.
pub(super) async fn count<'e>(
    executor: impl PgExecutor<'e>,
    sql: &TokenStatements,
    prefix: &str,
    limit: usize,
) -> Result<(u64, u64), sqlx::Error> {
    let past = past(prefix);
    let row = sql
        .send(
            &sql.count,
            &[
                Value::Text(prefix),
                Value::OptText(past.as_deref()),
                Value::Int(i64::try_from(limit).unwrap_or(i64::MAX)),
            ],
        )
        .fetch_one(executor)
        .await?;
    let live: i64 = row.try_get(0)?;
    let redeemed: i64 = row.try_get(1)?;
    Ok((
        u64::try_from(live).unwrap_or(0),
        u64::try_from(redeemed).unwrap_or(0),
    ))
}

/// Adds counted tokens to `stats`.
pub(super) fn add(stats: &mut Stats, (live, redeemed): (u64, u64)) {
    stats.tokens += live;
    stats.redeemed_tokens += redeemed;
}
