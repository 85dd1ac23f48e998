//! `tx = conn` on tokio-postgres: a `&mut tokio_postgres::Transaction<'_>` (the caller's
//! transaction) and a `&mut tokio_postgres::Client` (idem begins one) on every shape of
//! function, called with deadpool-postgres' `Transaction` and `Object` (they deref to them),
//! a `&mut deadpool_postgres::ClientWrapper` called with an `Object`, and `Call::run_tx` on
//! each.
#![deny(warnings)]

use idem::idempotent;
use serde::{Deserialize, Serialize};
use tokio_postgres::{Client, Transaction};

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

async fn debit(conn: &Client, amount: i64) -> Result<u64, Refused> {
    conn.execute("UPDATE accounts SET balance = balance - $1", &[&amount])
        .await
        .map_err(|_| Refused::Balance)
}

#[idempotent(key = id, tx = conn)]
async fn plain(conn: &mut Transaction<'_>, id: u64) -> u64 {
    debit(conn.client(), 1).await.unwrap_or(0) + id
}

#[idempotent(key = id, tx = conn)]
async fn fallible(id: u64, conn: &mut Transaction<'_>) -> Result<u64, Refused> {
    debit(conn.client(), 2).await
}

#[idempotent(key = id, tx = conn, cache_err = |e: &Refused| matches!(e, Refused::Balance))]
async fn some_errors_stored(conn: &mut Transaction<'_>, id: u64) -> Result<u64, Refused> {
    debit(conn.client(), id as i64).await
}

#[idempotent(key = id, tx = conn, cache_err = true)]
async fn on_a_client(conn: &mut Client, id: u64) -> Result<u64, Refused> {
    debit(conn, id as i64).await
}

#[idempotent(key = id, tx = conn)]
async fn plain_on_a_client(conn: &mut Client, id: u64) -> u64 {
    debit(conn, 1).await.unwrap_or(id)
}

/// On a pool's `ClientWrapper` (what its `Object` derefs to): idem's statements are prepared
/// in the connection's cache, and the body receives the wrapper.
#[idempotent(key = id, tx = conn)]
async fn on_a_pooled_client(
    conn: &mut deadpool_postgres::ClientWrapper,
    id: u64,
) -> Result<u64, Refused> {
    let _cached = conn.statement_cache.size();
    debit(conn, id as i64).await
}

async fn with_deadpool(pool: deadpool_postgres::Pool) -> Result<u64, Refused> {
    let mut object = pool.get().await.expect("a connection");
    // The pool's `Object` derefs to a `Client`: idem begins a transaction for the call.
    let mut total = plain_on_a_client(&mut object, 1).await? + on_a_client(&mut object, 2).await?;
    total += on_a_pooled_client(&mut object, 9).await?;
    // The pool's `Transaction` derefs to tokio-postgres's: the call runs in it.
    let mut transaction = object.transaction().await.expect("begin");
    total += plain(&mut transaction, 3).await? + fallible(4, &mut transaction).await?;
    total += some_errors_stored(&mut transaction, 5).await?;
    transaction.commit().await.expect("commit");
    // `Call::run_tx` on both: the body receives the tokio-postgres type.
    let outcome = idem::Call::new("ledger::debit", 6)
        .run_tx(&mut object, async |conn: &mut Client| {
            debit(conn, 6).await.unwrap_or(0)
        })
        .await?;
    let mut transaction = object.transaction().await.expect("begin");
    let inside = idem::Call::new("ledger::debit", 7)
        .run_result_tx(&mut transaction, async |conn: &mut Transaction<'_>| {
            debit(conn.client(), 7).await
        })
        .await?;
    transaction.commit().await.expect("commit");
    Ok(total + outcome.value + inside.value?)
}

async fn by_hand(client: &mut Client) -> Result<u64, idem::Error> {
    let mut transaction = client.transaction().await.expect("begin");
    let outcome = idem::Call::new("ledger::debit", 8)
        .run_tx(&mut transaction, async |conn: &mut Transaction<'_>| {
            debit(conn.client(), 8).await.unwrap_or(0)
        })
        .await?;
    transaction.commit().await.expect("commit");
    Ok(outcome.value)
}

fn main() {
    // Compiled, not run: these need a database.
    let _ = (with_deadpool, by_hand);
}
