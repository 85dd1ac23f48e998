//! The engine behind [`idem`](https://docs.rs/idem): the record state machine, the [`Store`]
//! trait and its stores, the payload codec, keys, configuration and errors.
//!
//! Applications depend on the `idem` crate, which re-exports everything here next to the
//! `#[idempotent]` attribute.
//!
//! # Metrics
//! - `idem_calls_total{scope, outcome}`: a counter per call; `outcome` is one of `executed`,
//!   `replayed`, `waited`, `rejected`, `mismatch`, `store_error`, `lease_lost`, `fail_open`,
//!   `decode_error`.
//! - `idem_store_seconds{op}`: a histogram of store round-trip time per operation (`claim`,
//!   `complete`, `release`, `renew`, `wait`).
//!
//! Every call also runs in a `tracing` span `idem` (level DEBUG) with the scope, a hash of the
//! key and the outcome.
#![deny(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs, unreachable_pub)]

mod cache;
mod call;
mod codec;
mod config;
mod context;
mod engine;
mod error;
mod key;
mod observe;
mod record;
pub mod store;

#[cfg(feature = "axum")]
pub mod http;

#[cfg(feature = "testing")]
pub mod testing;

#[doc(hidden)]
#[path = "private.rs"]
pub mod __private;

pub use call::{Call, Outcome, Status, run};
pub use config::{Config, ENV_VARS, FailMode};
pub use context::{Idem, init, with_store};
pub use error::{Error, StoreError, StoreErrorKind};
pub use observe::{CALLS_TOTAL, STORE_SECONDS};
pub use record::{Claim, Fingerprint, Record, Token};
pub use store::memory::MemoryStore;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use store::postgres;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use store::postgres::{PostgresOptions, PostgresStore};
#[cfg(feature = "redis")]
pub use store::redis::RedisStore;
pub use store::{Fence, Store, StoreFuture, StoreHandle};
