//! What operators do to one key outside of a call: [`inspect`] it, [`forget`] it,
//! [`complete`] it by hand; and what they count: [`stats`].

use std::time::Duration;

use crate::context::Idem;
use crate::error::Error;
use crate::record_key::RecordKey;
use crate::store::{Inspection, Stats, StoreHandle};

/// The store, the store key of `key` in `scope`, the scope to log and count it under, and the
/// local cache, on the idem a call made here would use.
fn resolve(
    scope: &str,
    key: &RecordKey,
) -> Result<
    (
        StoreHandle,
        String,
        String,
        Option<crate::cache::LocalCache>,
    ),
    Error,
> {
    Idem::with_current(|current| {
        let store_key = current.store_key_of(scope, key);
        // A store key given as it is, without a scope: its own, when it has this prefix.
        let named = match store_key.strip_prefix(&current.key_prefix()) {
            Some(rest) if scope.is_empty() && key.is_stored() => {
                let stored = String::from_utf8_lossy(crate::key::stored_scope(rest.as_bytes()));
                crate::key::scope_name(&stored).unwrap_or_else(|| stored.into_owned())
            }
            _ => scope.to_owned(),
        };
        (
            current.store.clone(),
            store_key,
            named,
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

/// What the configured store holds for the call of `scope` with `key`: [`Inspection::Absent`],
/// a call in progress and the lease it has left, or a completed record and the time it has
/// left.
///
/// `key` is a [`RecordKey`]: a single key (any `Display` value, as
/// [`Call::new`](crate::Call::new) takes it), the parts of a tuple key, the principal and key
/// of an HTTP request, or a store key as it is stored (then `scope` is not used).
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
///
/// A key whose last attempt was abandoned (see [`Abandoned`](crate::Abandoned)) and that holds
/// no live record is [`Inspection::Abandoned`], with the attempt, when it began and how many of
/// its steps completed.
pub async fn inspect(scope: &str, key: impl Into<RecordKey>) -> Result<Inspection, Error> {
    let (store, key, scope, _) = resolve(scope, &key.into())?;
    reachable(&scope, &store)?;
    let inspection = store.inspect(&key).await.map_err(|source| Error::Store {
        key: key.clone(),
        source,
    })?;
    if inspection == Inspection::Absent
        && let Some(mark) = crate::abandoned::abandoned(&store, &key).await
    {
        return Ok(Inspection::Abandoned {
            attempt: mark.attempt,
            since: mark.since(),
            steps: crate::abandoned::completed_steps(&store, &key).await,
        });
    }
    Ok(inspection)
}

/// Stores `value` as the result of the call of `scope` with `key`, kept for `ttl`: the next
/// call replays it instead of running its body. For an operator who settled by hand what an
/// abandoned attempt did (see [`Abandoned`](crate::Abandoned)): the call's attempt mark and
/// recorded steps are forgotten with it.
///
/// `value` is the function's value as JSON: for a function that returns `Result<T, E>`, the
/// `T`; it must read back as that type, or the next call fails with [`Error::Decode`]. The
/// record has no fingerprint, so a call with any request replays it.
///
/// ```
/// # use idem_runtime as idem;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), idem::Error> {
/// use std::time::Duration;
/// idem::with_store(idem::MemoryStore::new(), async {
///     idem::complete("billing::invoice", "inv-42", serde_json::json!(7), Duration::from_secs(3600)).await?;
///     let call = idem::Call::new("billing::invoice", "inv-42").run(async { 1_u64 }).await?;
///     assert_eq!(call.value, 7);
///     Ok(())
/// })
/// .await
/// # }
/// ```
///
/// Fails with [`Error::InProgress`] when a call holds the key, with [`Error::Config`] when it
/// holds a result already (forget it first) or `ttl` is below a second, and as [`forget`]
/// fails otherwise.
pub async fn complete(
    scope: &str,
    key: impl Into<RecordKey>,
    value: serde_json::Value,
    ttl: Duration,
) -> Result<(), Error> {
    let (store, key, scope, local) = resolve(scope, &key.into())?;
    reachable(&scope, &store)?;
    crate::config::check_ttl(ttl)?;
    let failed = |source| Error::Store {
        key: key.clone(),
        source,
    };
    let payload =
        crate::codec::seal(None, crate::codec::RecordSide::Ok, &value).map_err(|reason| {
            Error::Config(format!("the value for `{key}` cannot be stored: {reason}"))
        })?;
    let claim = crate::record::Claim::new(None);
    match store
        .claim(&key, &claim, COMPLETE_LEASE)
        .await
        .map_err(failed)?
    {
        None => {}
        Some(crate::record::Record::InProgress(_)) => return Err(Error::InProgress { key }),
        Some(crate::record::Record::Completed { .. }) => {
            return Err(Error::Config(format!(
                "`{key}` holds a result already; forget it first to store another"
            )));
        }
    }
    match store
        .complete(&key, &claim, &payload, ttl)
        .await
        .map_err(failed)?
    {
        crate::store::Fence::Held => {}
        crate::store::Fence::Lost => return Err(Error::InProgress { key }),
    }
    if let Some(local) = &local {
        local.remove(&key);
    }
    forget_beside(&store, &key).await?;
    tracing::info!(scope = scope.as_str(), key = %key, "idem completed a key by hand");
    Ok(())
}

/// How long [`complete`] holds the key between its claim and its result.
const COMPLETE_LEASE: Duration = Duration::from_secs(30);

/// Forgets what a call keeps beside its record: its attempt mark and its recorded steps
/// (numbered from 1, the first one absent ends them). Whether there was a mark.
async fn forget_beside(store: &StoreHandle, key: &str) -> Result<bool, Error> {
    let failed = |source| Error::Store {
        key: key.to_owned(),
        source,
    };
    let marked = store
        .forget(&crate::abandoned::mark_key(key))
        .await
        .map_err(failed)?;
    for index in 1.. {
        let step = crate::call_context::step_key(key, index);
        if !store.forget(&step).await.map_err(failed)? {
            break;
        }
    }
    Ok(marked)
}

/// Deletes what the configured store holds for the call of `scope` with `key`, so that the
/// next call runs again, and wakes the calls waiting on it; returns whether a live record was
/// deleted.
///
/// `key` is a [`RecordKey`], as for [`inspect`]: a single key (any `Display` value), tuple
/// parts, an HTTP request's principal and key, or a store key as it is stored (then `scope`
/// only names the record in the log and the metric; when it is empty, the scope read from
/// the store key does).
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
///     idem::Call::with_parts("billing::invoice", ["acme", "inv-7"]).run(async { 3_u64 }).await?;
///     assert!(idem::forget("billing::invoice", idem::RecordKey::parts(["acme", "inv-7"])).await?);
///     Ok(())
/// })
/// .await
/// # }
/// ```
///
/// The call's recorded [`step`](crate::step)s and its attempt mark are forgotten with it, so
/// that the next call runs every step, as attempt 1 (a key whose last attempt was abandoned
/// holds only those: forgetting it counts as deleting a record).
///
/// Fails with [`Error::Store`] when the store fails or does not support forgetting, and with
/// [`Error::Config`] when this process's transactional calls (`tx = conn`) of `scope` write
/// their records into a PostgreSQL table the configured store does not read (the message
/// names the table and how to reach it); with [`Error::Config`] too when no idem is installed
/// (see [`install`](crate::install)).
pub async fn forget(scope: &str, key: impl Into<RecordKey>) -> Result<bool, Error> {
    let (store, key, scope, local) = resolve(scope, &key.into())?;
    reachable(&scope, &store)?;
    let scope = scope.as_str();
    if let Some(local) = &local {
        local.remove(&key);
    }
    let forgotten = store.forget(&key).await;
    // Removed again: a call completing meanwhile may have cached the record once more.
    if let Some(local) = &local {
        local.remove(&key);
    }
    // The call's attempt mark and recorded steps go with it.
    let marked = match &forgotten {
        Ok(_) => forget_beside(&store, &key).await?,
        Err(_) => false,
    };
    match forgotten {
        Ok(deleted) => {
            let deleted = deleted || marked;
            tracing::info!(scope, key = %key, deleted, "idem forgot a key");
            crate::observe::count_forget(scope);
            Ok(deleted)
        }
        Err(source) => Err(Error::Store { key, source }),
    }
}

/// How many live records the configured store holds under the configured prefix, by state
/// (calls in progress and completed records) and by scope ([`Stats::scopes`]), counting at most
/// `limit` of them. When there are more, the counts are those of a sample ([`Stats::exact`] is
/// `false`): a large store is never read whole. For operators; the `idem` command's `stats`
/// runs it (`--by-scope` prints the scopes).
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
///     idem::Call::new("shop::refund", "a").run(async { 1_u8 }).await?;
///     let scopes = all.scopes.unwrap();
///     assert_eq!((scopes.len(), scopes[0].scope.as_str()), (1, "shop.charge"));
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
