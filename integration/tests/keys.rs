//! A key chosen by a client never reaches another function's record: store keys are an
//! injective encoding of (prefix, scope, key parts). Each test here is a collision of the
//! old `prefix:scope:key` format, through the attribute as a service would write it.

use std::sync::atomic::{AtomicUsize, Ordering};

use idem::{MemoryStore, idempotent};

static CHARGES: AtomicUsize = AtomicUsize::new(0);
static REFUNDS: AtomicUsize = AtomicUsize::new(0);

#[idempotent(key = order, scope = "billing", store = STORE.clone())]
async fn billing(order: &str) -> String {
    CHARGES.fetch_add(1, Ordering::SeqCst);
    format!("billing {order}")
}

#[idempotent(key = order, scope = "billing:refund", store = STORE.clone())]
async fn billing_refund(order: &str) -> String {
    REFUNDS.fetch_add(1, Ordering::SeqCst);
    format!("refund {order}")
}

static STORE: std::sync::LazyLock<MemoryStore> = std::sync::LazyLock::new(MemoryStore::new);

#[tokio::test]
async fn a_key_with_a_colon_cannot_reach_a_scope_with_a_colon() {
    assert_eq!(billing_refund("7").await.unwrap(), "refund 7");
    // Under the old format both were `idem:billing:refund:7`: this replayed the refund.
    assert_eq!(billing("refund:7").await.unwrap(), "billing refund:7");
    assert_eq!(CHARGES.load(Ordering::SeqCst), 1);
    assert_eq!(REFUNDS.load(Ordering::SeqCst), 1);
}

/// A function and a module of the same name: default scopes `…::app::charge` and
/// `…::app::charge::refund`.
mod app {
    use super::*;

    pub static RUNS: AtomicUsize = AtomicUsize::new(0);

    #[idempotent(key = id, store = STORE.clone())]
    pub async fn charge(id: &str) -> String {
        RUNS.fetch_add(1, Ordering::SeqCst);
        format!("charged {id}")
    }

    pub mod charge {
        use super::*;

        #[idempotent(key = id, store = STORE.clone())]
        pub async fn refund(id: &str) -> String {
            RUNS.fetch_add(1, Ordering::SeqCst);
            format!("refunded {id}")
        }
    }
}

#[tokio::test]
async fn default_scopes_of_a_function_and_a_module_never_meet() {
    assert_eq!(app::charge::refund("7").await.unwrap(), "refunded 7");
    // Under the old format `…::charge` + `:refund:7` was `…::charge::refund` + `7`.
    assert_eq!(app::charge(":refund:7").await.unwrap(), "charged :refund:7");
    assert_eq!(app::charge("refund::7").await.unwrap(), "charged refund::7");
    assert_eq!(app::RUNS.load(Ordering::SeqCst), 3);
}

static TUPLE_RUNS: AtomicUsize = AtomicUsize::new(0);

#[idempotent(key = key, scope = "pairs", store = STORE.clone())]
async fn single(key: &str) -> String {
    TUPLE_RUNS.fetch_add(1, Ordering::SeqCst);
    format!("single {key}")
}

#[idempotent(key = (a, b), scope = "pairs", store = STORE.clone())]
async fn pair(a: &str, b: &str) -> String {
    TUPLE_RUNS.fetch_add(1, Ordering::SeqCst);
    format!("pair {a} {b}")
}

#[tokio::test]
async fn a_single_key_never_equals_a_tuple_key() {
    assert_eq!(pair("a", "b").await.unwrap(), "pair a b");
    assert_eq!(single("a:b").await.unwrap(), "single a:b");
    assert_eq!(pair("a:b", "").await.unwrap(), "pair a:b ");
    assert_eq!(pair("a", ":b").await.unwrap(), "pair a :b");
    // The same parts again replay.
    assert_eq!(pair("a", "b").await.unwrap(), "pair a b");
    assert_eq!(TUPLE_RUNS.load(Ordering::SeqCst), 4);
}
