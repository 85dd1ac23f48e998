//! How a statement of the store goes to the server: prepared once per connection and cached
//! by sqlx (the default), or, behind a transaction-mode pooler
//! ([`PostgresOptions::pooler`](super::PostgresOptions::pooler)), with its values written into
//! its text as literals and sent by the simple query protocol.
//!
//! A transaction-mode pooler (PgBouncer's `pool_mode = transaction`) gives a client a server
//! connection for one transaction at a time. A named prepared statement lives on the server
//! connection that parsed it, so a cached one is missing (or another's) on the next; even an
//! unnamed one does not survive: sqlx parses it and binds it in two exchanges, each ending in
//! `Sync`, and the pooler may hand the server connection to another client in between. A
//! simple `Query` message is one exchange and leaves nothing on the server: one round trip,
//! as a cached statement's, but parsed and planned on every call.
//!
//! The values written in are only ever these: text (quoted as libpq's `PQescapeLiteral`
//! does), bytes (hex digits, through `decode`), and integers, each cast to the type sqlx
//! would have declared for its parameter, so the statement means the same either way.

use sqlx::postgres::{PgArguments, PgExecutor, PgQueryResult, PgRow};
use sqlx::query::Query;
use sqlx::{AssertSqlSafe, Postgres, RawSql, SqlStr};

/// A value of a statement's parameter `$n`.
#[derive(Debug, Clone, Copy)]
pub enum Value<'a> {
    /// `text`.
    Text(&'a str),
    /// `text` or NULL.
    OptText(Option<&'a str>),
    /// `bytea`.
    Bytes(&'a [u8]),
    /// `bytea` or NULL.
    OptBytes(Option<&'a [u8]>),
    /// `int8`.
    Int(i64),
}

/// A statement with its values, ready to run on an executor.
pub(super) enum Sent<'a> {
    /// Prepared and cached by the connection, the values bound.
    Prepared(Query<'a, Postgres, PgArguments>),
    /// The values written in; the simple query protocol.
    Inline(RawSql),
}

/// `statement` with `values`: [`Sent::Inline`] when `inline`, else [`Sent::Prepared`].
pub(super) fn send<'a>(statement: &SqlStr, values: &[Value<'a>], inline: bool) -> Sent<'a> {
    if inline {
        let text = written_in(statement.as_str(), values);
        return Sent::Inline(sqlx::raw_sql(AssertSqlSafe(text)));
    }
    let mut query = sqlx::query(statement.clone());
    for value in values {
        query = match *value {
            Value::Text(text) => query.bind(text),
            Value::OptText(text) => query.bind(text),
            Value::Bytes(bytes) => query.bind(bytes),
            Value::OptBytes(bytes) => query.bind(bytes),
            Value::Int(n) => query.bind(n),
        };
    }
    Sent::Prepared(query)
}

impl Sent<'_> {
    /// The first row, if any.
    pub(super) async fn fetch_optional<'e>(
        self,
        executor: impl PgExecutor<'e>,
    ) -> Result<Option<PgRow>, sqlx::Error> {
        match self {
            Sent::Prepared(query) => query.fetch_optional(executor).await,
            Sent::Inline(raw) => raw.fetch_optional(executor).await,
        }
    }

    /// The first row; an error when there is none.
    pub(super) async fn fetch_one<'e>(
        self,
        executor: impl PgExecutor<'e>,
    ) -> Result<PgRow, sqlx::Error> {
        match self {
            Sent::Prepared(query) => query.fetch_one(executor).await,
            Sent::Inline(raw) => raw.fetch_one(executor).await,
        }
    }

    /// Every row.
    pub(super) async fn fetch_all<'e>(
        self,
        executor: impl PgExecutor<'e>,
    ) -> Result<Vec<PgRow>, sqlx::Error> {
        match self {
            Sent::Prepared(query) => query.fetch_all(executor).await,
            Sent::Inline(raw) => raw.fetch_all(executor).await,
        }
    }

    /// The rows it affected.
    pub(super) async fn execute<'e>(
        self,
        executor: impl PgExecutor<'e>,
    ) -> Result<PgQueryResult, sqlx::Error> {
        match self {
            Sent::Prepared(query) => query.execute(executor).await,
            Sent::Inline(raw) => raw.execute(executor).await,
        }
    }
}

/// `statement` with each `$n` outside quotes replaced by the literal of `values[n - 1]`. The
/// statements are the store's own: quoted identifiers (`"…"`) and standard string literals
/// (`'…'`), no comments, no dollar quoting. A `$n` with no value stays as it is (the server
/// then refuses the statement).
fn written_in(statement: &str, values: &[Value<'_>]) -> String {
    let mut out = String::with_capacity(statement.len() + 16 * values.len());
    let mut quote: Option<char> = None;
    let mut rest = statement.char_indices().peekable();
    while let Some((at, c)) = rest.next() {
        match quote {
            // A doubled quote closes and opens again: the same state afterwards.
            Some(open) => {
                if c == open {
                    quote = None;
                }
                out.push(c);
            }
            None if c == '\'' || c == '"' => {
                quote = Some(c);
                out.push(c);
            }
            None if c == '$' => {
                let mut end = at + 1;
                while let Some(&(i, d)) = rest.peek() {
                    if !d.is_ascii_digit() {
                        break;
                    }
                    end = i + 1;
                    rest.next();
                }
                let value = statement[at + 1..end]
                    .parse::<usize>()
                    .ok()
                    .and_then(|n| n.checked_sub(1))
                    .and_then(|i| values.get(i));
                match value {
                    Some(value) => literal(&mut out, *value),
                    None => out.push_str(&statement[at..end]),
                }
            }
            None => out.push(c),
        }
    }
    out
}

/// Appends the literal of `value`, in parentheses, cast to its parameter's type.
fn literal(out: &mut String, value: Value<'_>) {
    match value {
        Value::Text(text) | Value::OptText(Some(text)) => {
            out.push('(');
            text_literal(out, text);
            out.push_str("::text)");
        }
        Value::OptText(None) => out.push_str("(NULL::text)"),
        Value::Bytes(bytes) | Value::OptBytes(Some(bytes)) => {
            out.push_str("decode('");
            out.push_str(&hex::encode(bytes));
            out.push_str("', 'hex')");
        }
        Value::OptBytes(None) => out.push_str("(NULL::bytea)"),
        Value::Int(n) => out.push_str(&format!("({n}::int8)")),
    }
}

/// A string literal that means `text` whatever `standard_conforming_strings` is: quotes
/// doubled, and when there is a backslash, an escape string (`E'…'`) with backslashes doubled.
/// (A key never holds NUL, which a literal cannot; the store refuses such keys first.)
fn text_literal(out: &mut String, text: &str) {
    let escape = text.contains('\\');
    if escape {
        out.push_str(" E");
    }
    out.push('\'');
    for c in text.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' if escape => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('\'');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_written_in_as_typed_literals() {
        let sql = written_in(
            "SELECT $1, $2, $3, $4, $5, $6, $7 FROM t WHERE k = $1",
            &[
                Value::Text("it's"),
                Value::Text(r"a\b"),
                Value::Bytes(&[0, 255]),
                Value::OptBytes(None),
                Value::Int(-5),
                Value::OptText(None),
                Value::OptText(Some("x")),
            ],
        );
        assert_eq!(
            sql,
            r"SELECT ('it''s'::text), ( E'a\\b'::text), decode('00ff', 'hex'), (NULL::bytea), (-5::int8), (NULL::text), ('x'::text) FROM t WHERE k = ('it''s'::text)"
        );
    }

    #[test]
    fn parameters_inside_quotes_are_left_alone() {
        let sql = written_in(
            r#"SELECT '$1', "a$1""b", 'it''s $2', $2, $10"#,
            &[Value::Int(1), Value::Int(2)],
        );
        assert_eq!(sql, r#"SELECT '$1', "a$1""b", 'it''s $2', (2::int8), $10"#);
    }

    #[test]
    fn a_value_is_never_read_as_a_parameter() {
        let sql = written_in("SELECT $1, $2", &[Value::Text("$2"), Value::Text("'$1")]);
        assert_eq!(sql, "SELECT ('$2'::text), ('''$1'::text)");
    }
}
