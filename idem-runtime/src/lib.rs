//! The engine behind [`idem`](https://docs.rs/idem): the record state machine, the [`Store`]
//! trait and its stores, the payload codec, keys, configuration and errors.
//!
//! Applications depend on the `idem` crate, which re-exports everything here next to the
//! `#[idempotent]` attribute.
//!
//! # Metrics
//! - `idem_calls_total{scope, outcome}`: a counter per call; `outcome` is one of `executed`,
//!   `replayed`, `waited` (the body ran, or a stored result was replayed, at once or after
//!   waiting); `rejected` ([`Error::InProgress`]), `mismatch` ([`Error::KeyMismatch`]),
//!   `store_error` ([`Error::Store`]), `fail_open` (ran unprotected); `lease_lost`,
//!   `not_stored` (ran, result not stored: lease ended, or storing failed), `unstorable` (ran,
//!   result cannot be stored as its type, or [`Error::Unstorable`]); `decode_error`
//!   ([`Error::Decode`]); `config_error` ([`Error::Config`]), `fingerprint_error`
//!   ([`Error::Fingerprint`]); `conflict` ([`Error::Conflict`], transactional mode);
//!   `abandoned` ([`Error::Abandoned`]).
//! - `idem_forget_total{scope}`: a counter of [`forget`]s the store answered.
//! - `idem_store_seconds{op}`: a histogram of store round-trip time per operation (`claim`,
//!   `complete`, `release`, `renew`, `wait`); off with
//!   [`Config::store_latency`](Config::store_latency).
//!
//! Every call also runs in a `tracing` span `idem` (level DEBUG) with the scope, the key as
//! stored (hashed when long or unprintable, always with `hash_keys`) and the outcome.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

mod abandoned;
mod admin;
mod cache;
mod call;
mod call_context;
mod codec;
mod config;
mod context;
mod engine;
mod error;
mod key;
mod observe;
mod outcome;
mod record;
mod record_key;
pub mod store;
pub mod tokens;

#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub mod http;

#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod testing;

#[doc(hidden)]
#[path = "private.rs"]
pub mod __private;

pub use abandoned::Abandoned;
pub use admin::{complete, forget, inspect, stats};
pub use call::Call;
pub use call_context::{
    CallContext, STEP_BYTES_LIMIT, call_context, derive_key, step, try_step, with_status,
};
pub use config::{Config, FailMode};
pub use context::{Idem, init, install, with_store};
pub use error::{Error, StoreError, StoreErrorKind};
pub use observe::{CALLS_TOTAL, FORGET_TOTAL, STORE_SECONDS};
pub use outcome::{Outcome, Status};
pub use record::Fingerprint;
pub use record_key::RecordKey;
pub use store::memory::MemoryStore;
#[cfg(feature = "mysql")]
#[cfg_attr(docsrs, doc(cfg(feature = "mysql")))]
pub use store::mysql::{self, MySqlOptions, MySqlStore};
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use store::postgres;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use store::postgres::{PostgresOptions, PostgresStore};
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use store::redis::{RedisOptions, RedisStore};
#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub use store::sqlite::{self, SqliteOptions, SqliteStore};
#[cfg(any(feature = "postgres", feature = "sqlite", feature = "mysql"))]
#[cfg_attr(
    docsrs,
    doc(cfg(any(feature = "postgres", feature = "sqlite", feature = "mysql")))
)]
pub use store::tx::TxConnection;
pub use store::{Inspection, ScopeStats, Stats, Store, StoreHandle};
