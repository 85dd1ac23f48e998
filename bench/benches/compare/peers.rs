//! The peers, doing the same work as idem: the `cached` crate's Redis store (a read of a
//! cached value) and the `idempotent` crate's Valkey/Redis store (a replay, and a first call:
//! claim then complete).

use std::sync::Arc;

use bytes::Bytes;
use cached::{AsyncRedisCache, ConcurrentCachedAsync};
use idempotent::entry::ExistingEntry;
use idempotent::fingerprint::{DefaultFingerprintStrategy, FingerprintStrategy};
use idempotent::store::valkey::ValkeyStore;
use idempotent::store::{IdempotencyStore, InsertResult};
use idempotent::{CachedResponse, Fingerprint, IdempotencyEntry, IdempotencyKey, Metadata};

use crate::workload::{Receipt, TTL, receipt};

/// The `cached` crate's async Redis store of receipts.
pub type CachedStore = Arc<AsyncRedisCache<u64, Receipt>>;

pub async fn cached_store(url: &str) -> CachedStore {
    let store = AsyncRedisCache::builder("receipts")
        .connection_string(url)
        .ttl(TTL)
        .build()
        .await
        .expect("build the cached crate's Redis store");
    Arc::new(store)
}

/// A read of a cached receipt with the `cached` crate (its memoized function's hit path).
pub async fn cached_read(store: &CachedStore, order: u64) -> Receipt {
    store
        .async_cache_get(&order)
        .await
        .expect("cached: GET")
        .expect("a cached receipt")
}

pub async fn cached_fill(store: &CachedStore, order: u64) {
    let _ = store
        .async_cache_set(order, receipt(order))
        .await
        .expect("cached: SET");
}

/// The `idempotent` crate's Valkey store.
pub type PeerStore = Arc<ValkeyStore>;

pub async fn idempotent_store(url: &str) -> PeerStore {
    let client = redis::Client::open(url).expect("the server's URL");
    Arc::new(
        ValkeyStore::new(client)
            .await
            .expect("build the idempotent crate's Valkey store"),
    )
}

fn fingerprint(order: u64) -> Fingerprint {
    DefaultFingerprintStrategy.compute("charge", &order.to_le_bytes())
}

fn key(order: u64) -> IdempotencyKey {
    IdempotencyKey::new(format!("order-{order}")).expect("a valid key")
}

/// One call with the `idempotent` crate: claim; replay the stored response (checking the
/// fingerprint, decoding the receipt) or run the function and complete.
pub async fn idempotent_call(store: &PeerStore, order: u64) -> Receipt {
    let key = key(order);
    let fp = fingerprint(order);
    let entry = IdempotencyEntry::new(fp, TTL);
    match store
        .try_insert(&key, entry.clone())
        .await
        .expect("idempotent: claim")
    {
        InsertResult::Exists(ExistingEntry::Completed(done)) => {
            assert!(done.fingerprint_matches(fp), "same request");
            serde_json::from_slice(&done.response().body).expect("a stored receipt")
        }
        InsertResult::Exists(ExistingEntry::Processing(_)) => {
            panic!("the benchmark never calls a key in progress")
        }
        InsertResult::Claimed { fencing_token } => {
            let value = receipt(order);
            let response = CachedResponse {
                status_code: 200,
                metadata: Metadata::default(),
                body: Bytes::from(serde_json::to_vec(&value).unwrap()),
            };
            store
                .complete(&key, entry.complete(response), fencing_token)
                .await
                .expect("idempotent: complete");
            value
        }
    }
}
