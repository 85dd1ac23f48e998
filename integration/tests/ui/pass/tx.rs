//! `tx = conn` on every shape of function: plain, `Result`, `cache_err = true` and a
//! predicate, a method, a `mut` argument, and the connection anywhere in the arguments.
#![deny(warnings)]

use idem::idempotent;
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;

#[derive(Debug, Serialize, Deserialize)]
enum Refused {
    Balance,
    Idem(String),
}

impl From<idem::Error> for Refused {
    fn from(error: idem::Error) -> Self {
        Refused::Idem(error.to_string())
    }
}

async fn debit(conn: &mut PgConnection, amount: i64) -> Result<u64, Refused> {
    sqlx::query("UPDATE accounts SET balance = balance - $1")
        .bind(amount)
        .execute(&mut *conn)
        .await
        .map(|done| done.rows_affected())
        .map_err(|_| Refused::Balance)
}

#[idempotent(key = id, tx = conn)]
async fn plain(conn: &mut PgConnection, id: u64) -> u64 {
    debit(conn, 1).await.unwrap_or(0) + id
}

#[idempotent(key = id, tx = conn)]
async fn fallible(id: u64, conn: &mut PgConnection) -> Result<u64, Refused> {
    debit(&mut *conn, 2).await
}

#[idempotent(key = id, tx = conn, cache_err = true)]
async fn every_error_stored(conn: &mut PgConnection, id: u64) -> Result<u64, Refused> {
    debit(conn, id as i64).await
}

#[idempotent(key = id, tx = conn, cache_err = |e: &Refused| matches!(e, Refused::Balance))]
async fn some_errors_stored(conn: &mut PgConnection, id: u64) -> Result<u64, Refused> {
    debit(conn, id as i64).await
}

#[idempotent(key = id, tx = conn)]
async fn rebinds(mut conn: &mut PgConnection, id: u64) -> u64 {
    let again: &mut PgConnection = conn;
    conn = again;
    debit(conn, 1).await.unwrap_or(id)
}

struct Ledger {
    name: String,
}

impl Ledger {
    #[idempotent(key = (&self.name, id), tx = conn, ttl = "1h", wait = "2s")]
    async fn post(&self, conn: &mut PgConnection, id: u64) -> Result<String, Refused> {
        debit(conn, id as i64).await.map(|n| format!("{}:{n}", self.name))
    }
}

fn main() {
    // Compiled, not run: these need a database.
    let _ = (plain, fallible, every_error_stored, some_errors_stored, rebinds);
    let _ = Ledger { name: "l".into() }.name;
    let _ = Ledger::post;
}
