//! Test support for stores and for code that calls them.
//!
//! - **The store conformance suite**: the behaviour every [`Store`](crate::Store) must show,
//!   as async functions ([`exactly_once_under_concurrency`], [`fenced_operations`], … all
//!   named in [`CASES`]) that panic with a description of what went wrong. The `tokens_…`
//!   cases check server-issued tokens ([`tokens_redeem_once_under_concurrency`]: one of 64
//!   concurrent redemptions is valid; unknown and expired tokens refused; a redeemed token's
//!   duplicate replays; the bound); a store without tokens (the trait's defaults) passes them.
//! - **Test stores**: [`Forwarding`] wraps any store to count and record its operations, fail
//!   chosen ones, delay answers, hide the remaining lifetime of records, and tell a test when a
//!   call waits or is told a key is in progress; [`DownStore`] is a store whose backend is
//!   down.
//! - [`store_key`]: the key a call writes under, for tests that look at a store's records.
//! - [`within`]: awaits an event in a test, failing it with a message after [`EVENT_LIMIT`].
//!
//! Run the whole suite against a store with [`conformance_tests!`](crate::conformance_tests),
//! which writes one `#[tokio::test]` per case (the calling crate needs `tokio` with the
//! `macros` and `rt-multi-thread` features as a dev-dependency):
//!
//! ```ignore
//! // tests/my_store.rs
//! idem::conformance_tests!(my_store, async { (MyStore::connect().await, ()) });
//! ```
//!
//! The async expression returns the store and a guard kept alive for the test (a server
//! process, a temporary directory; `()` when there is nothing to keep). Every case uses keys
//! of its own random scope, so a store shared between cases or runs gives the same results.

mod bounded;
mod conformance;
mod keys;
mod stores;
mod tokens;

pub use bounded::{EVENT_LIMIT, within};
pub use conformance::*;
pub use keys::store_key;
pub use stores::{DownStore, Forwarding, Op, Watched};
pub use tokens::{
    tokens_bound_and_count, tokens_redeem_once_under_concurrency,
    tokens_redeemed_duplicate_replays, tokens_unknown_and_expired_are_refused,
};
