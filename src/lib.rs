//! Make async functions idempotent with one attribute.
//!
//! ```
//! use idem::idempotent;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
//! struct Receipt { order: u64, cents: u64 }
//!
//! #[idempotent(key = order, ttl = "24h")]
//! async fn charge(order: u64, cents: u64) -> Receipt {
//!     // runs once per order, however often it is called
//!     Receipt { order, cents }
//! }
//!
//! #[tokio::main(flavor = "current_thread")]
//! async fn main() -> Result<(), idem::Error> {
//!     idem::init(idem::Config::from_env()?).await?; // once at start-up: IDEM_STORE=redis://… or memory
//!     let first = charge(7, 1250).await?;
//!     let retry = charge(7, 1250).await?; // replayed: the body does not run again
//!     assert_eq!(first, retry);
//!     Ok(())
//! }
//! ```
//!
//! The first call with a key runs the body and stores its serialized result; every later call
//! with that key, from any task, process or machine sharing the store, gets the stored result
//! without running the body. A call arriving while the first still runs waits for its result
//! (or is rejected with [`Error::InProgress`] when `wait = "0s"`).
//!
//! See the [`idempotent`] attribute for its options, [`Call`] for the same engine without the
//! attribute, [`Config`] and [`init`] (or [`install`], for a store built from the application's
//! own clients) to choose the store, and [`Store`] to bring another backend
//! ([`store::registry::register_scheme`] lets `IDEM_STORE` choose it). A call made before
//! either fails with [`Error::Config`]: idem never falls back to a store of one process.
//!
//! Besides keys the client chooses, [`tokens`] issues single-use tokens that the server hands
//! out before a submission: a call keyed by one ([`Call::redeeming`]) runs once, a double
//! submission replays, a forged or expired token is refused before the body runs.
#![deny(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

pub use idem_macros::idempotent;
pub use idem_runtime::*;

/// The README's first example, run as a doctest so that it stays a complete program.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
