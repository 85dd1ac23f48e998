//! What operators do to one key outside of a call: [`inspect`] it, [`forget`] it.

use std::fmt::Display;

use crate::context::Idem;
use crate::error::Error;
use crate::store::{Inspection, Stats, StoreHandle};

/// The store, the store key a call of `scope` with `key` uses, and the local cache, on the
/// idem a call made here would use.
fn resolve(
    scope: &str,
    key: impl Display,
) -> Result<(StoreHandle, String, Option<crate::cache::LocalCache>), Error> {
    Idem::with_current(|current| {
        (
            current.store.clone(),
            current.store_key(scope, key),
            current.local.clone(),
        )
    })
}

/// Fails with [`Error::Config`] when this process's transactional calls (`tx = conn`) of
/// `scope` write their records into a PostgreSQL table that `store` does not read, naming it.
fn reachable(scope: &str, store: &StoreHandle) -> Result<(), Error> {
    #[cfg(feature = "postgres")]
    crate::store::postgres::tx::check_reachable(scope, store)?;
    #[cfg(not(feature = "postgres"))]
    let _ = (scope, store);
    Ok(())
}

/// What the configured store holds for the call of `scope` with `key` (the key as
/// [`Call::new`](crate::Call::new) takes it): [`Inspection::Absent`], a call in progress and
/// the lease it has left, or a completed record and the time it has left.
///
/// ```
/// # use idem_runtime as idem;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), idem::Error> {
/// idem::with_store(idem::MemoryStore::new(), async {
///     assert_eq!(idem::inspect("billing::invoice", "inv-42").await?, idem::Inspection::Absent);
///     idem::Call::new("billing::invoice", "inv-42").run(async { 42_u64 }).await?;
///     assert!(matches!(
///         idem::inspect("billing::invoice", "inv-42").await?,
///         idem::Inspection::Completed { .. }
///     ));
///     Ok(())
/// })
/// .await
/// # }
/// ```
///
/// Fails with [`Error::Store`] when the store fails or does not support inspection, and with
/// [`Error::Config`] when this process's transactional calls (`tx = conn`) of `scope` write
/// their records into a PostgreSQL table the configured store does not read (the message
/// names the table and how to reach it); with [`Error::Config`] too when no idem is installed
/// (see [`install`](crate::install)).
pub async fn inspect(scope: &str, key: impl Display) -> Result<Inspection, Error> {
    let (store, key, _) = resolve(scope, key)?;
    reachable(scope, &store)?;
    store
        .inspect(&key)
        .await
        .map_err(|source| Error::Store { key, source })
}

/// Deletes what the configured store holds for the call of `scope` with `key` (the key as
/// [`Call::new`](crate::Call::new) takes it), so that the next call runs again, and wakes the
/// calls waiting on it; returns whether a live record was deleted.
///
/// A call still running with this key loses its claim: its result is returned to its caller
/// but not stored. The local cache of this process forgets the key too; the local caches of
/// other processes replay it until their copy expires. Each forget is logged (`tracing`, level
/// INFO, with the key as stored) and counted in `idem_forget_total{scope}`.
///
/// ```
/// # use idem_runtime as idem;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), idem::Error> {
/// idem::with_store(idem::MemoryStore::new(), async {
///     idem::Call::new("billing::invoice", "inv-42").run(async { 1_u64 }).await?;
///     assert!(idem::forget("billing::invoice", "inv-42").await?);
///     let again = idem::Call::new("billing::invoice", "inv-42").run(async { 2_u64 }).await?;
///     assert_eq!(again.value, 2);
///     assert!(!idem::forget("billing::invoice", "never-called").await?);
///     Ok(())
/// })
/// .await
/// # }
/// ```
///
/// Fails with [`Error::Store`] when the store fails or does not support forgetting, and with
/// [`Error::Config`] when this process's transactional calls (`tx = conn`) of `scope` write
/// their records into a PostgreSQL table the configured store does not read (the message
/// names the table and how to reach it); with [`Error::Config`] too when no idem is installed
/// (see [`install`](crate::install)).
pub async fn forget(scope: &str, key: impl Display) -> Result<bool, Error> {
    let (store, key, local) = resolve(scope, key)?;
    reachable(scope, &store)?;
    if let Some(local) = &local {
        local.remove(&key);
    }
    let forgotten = store.forget(&key).await;
    // Removed again: a call completing meanwhile may have cached the record once more.
    if let Some(local) = &local {
        local.remove(&key);
    }
    match forgotten {
        Ok(deleted) => {
            tracing::info!(scope, key = %key, deleted, "idem forgot a key");
            crate::observe::count_forget(scope);
            Ok(deleted)
        }
        Err(source) => Err(Error::Store { key, source }),
    }
}

/// How many live records the configured store holds under the configured prefix (every scope),
/// by state: calls in progress and completed records, counting at most `limit` of them. When
/// there are more, the counts are those of a sample ([`Stats::exact`] is `false`): a large
/// store is never read whole. For operators; the `idem` command's `stats` runs it.
///
/// ```
/// # use idem_runtime as idem;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), idem::Error> {
/// idem::with_store(idem::MemoryStore::new(), async {
///     for order in ["a", "b", "c"] {
///         idem::Call::new("shop::charge", order).run(async { 1_u8 }).await?;
///     }
///     let all = idem::stats(10_000).await?;
///     assert_eq!((all.completed, all.in_progress, all.exact), (3, 0, true));
///     let sample = idem::stats(2).await?;
///     assert_eq!((sample.total(), sample.exact), (2, false));
///     Ok(())
/// })
/// .await
/// # }
/// ```
///
/// What each store reads: the memory store, its entries; Redis, `SCAN … MATCH <prefix>:*`
/// in batches (on every master of a Cluster) and the first bytes of each record found (never
/// `KEYS`), with `DBSIZE` as [`Stats::store_keys`]; PostgreSQL, at most `limit` live rows of
/// the prefix's key range, with the table's estimated row count (`pg_class.reltuples`).
///
/// Fails with [`Error::Store`] when the store fails or does not support it.
/// Fails with [`Error::Config`] when no idem is installed (see [`install`](crate::install)).
pub async fn stats(limit: usize) -> Result<Stats, Error> {
    let (store, prefix) =
        Idem::with_current(|current| (current.store.clone(), current.key_prefix()))?;
    store
        .stats(&prefix, limit)
        .await
        .map_err(|source| Error::Store {
            key: format!("{prefix}*"),
            source,
        })
}
