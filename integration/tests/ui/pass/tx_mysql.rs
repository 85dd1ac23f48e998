//! `tx = conn` on MySQL: a `&mut sqlx::MySqlConnection` on every shape of function (plain,
//! `Result`, `cache_err`), and `Call::run_tx` on a transaction, a pool's connection and a
//! connection.
#![deny(warnings)]

use idem::idempotent;
use serde::{Deserialize, Serialize};
use sqlx::MySqlConnection;

#[derive(Debug, Serialize, Deserialize)]
enum Refused {
    Stock,
    Idem(String),
}

impl From<idem::Error> for Refused {
    fn from(error: idem::Error) -> Self {
        Refused::Idem(error.to_string())
    }
}

async fn reserve(conn: &mut MySqlConnection, n: i64) -> Result<u64, Refused> {
    sqlx::query("UPDATE stock SET quantity = quantity - ?")
        .bind(n)
        .execute(&mut *conn)
        .await
        .map(|done| done.rows_affected())
        .map_err(|_| Refused::Stock)
}

#[idempotent(key = id, tx = conn)]
async fn plain(conn: &mut MySqlConnection, id: u64) -> u64 {
    reserve(conn, 1).await.unwrap_or(0) + id
}

#[idempotent(key = id, tx = conn)]
async fn fallible(id: u64, mut conn: &mut MySqlConnection) -> Result<u64, Refused> {
    let again: &mut MySqlConnection = conn;
    conn = again;
    reserve(conn, 2).await
}

#[idempotent(key = id, tx = conn, cache_err = |e: &Refused| matches!(e, Refused::Stock))]
async fn some_errors_stored(conn: &mut MySqlConnection, id: u64) -> Result<u64, Refused> {
    reserve(conn, id as i64).await
}

async fn by_hand(pool: sqlx::MySqlPool) -> Result<u64, idem::Error> {
    let mut transaction = pool.begin().await.expect("begin");
    let first = idem::Call::new("stock::reserve", 1)
        .run_tx(&mut transaction, async |conn: &mut MySqlConnection| {
            reserve(conn, 1).await.unwrap_or(0)
        })
        .await?;
    transaction.commit().await.expect("commit");
    let mut pooled = pool.acquire().await.expect("acquire");
    let second = idem::Call::new("stock::reserve", 2)
        .run_tx(&mut pooled, async |conn| reserve(conn, 1).await.unwrap_or(0))
        .await?;
    let third = idem::Call::new("stock::reserve", 3)
        .run_result_tx(&mut *pooled, async |conn: &mut MySqlConnection| {
            reserve(conn, 1).await
        })
        .await?;
    Ok(first.value + second.value + third.value.unwrap_or(0))
}

fn main() {
    // Compiled, not run: these need a database.
    let _ = (plain, fallible, some_errors_stored, by_hand);
}
