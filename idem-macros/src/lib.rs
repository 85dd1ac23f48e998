//! The `#[idempotent]` attribute of the [`idem`](https://docs.rs/idem) crate.
//!
//! Use it through `idem` (`use idem::idempotent;`): the generated code calls the runtime
//! through `::idem::__private`, so this crate alone is of no use.
//!
//! | file | its one job |
//! |---|---|
//! | `lib.rs` | the entry point and the documentation |
//! | `attr.rs` | the arguments, in two phases: each option as written, then the rules between options, into `Args` |
//! | `signature.rs` | the function under the attribute: the rules it must meet, the argument `tx` names, what it returns |
//! | `expand.rs` | the generated code, one step per function: the call, the type checks, the body, the runner, the signature |

#![deny(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

use proc_macro::TokenStream;

mod attr;
mod expand;
mod signature;
#[cfg(test)]
mod tests;

/// Makes an `async fn` idempotent: the first call with a key runs the body and stores its
/// result; every later or concurrent call with the same key gets that result back without
/// running the body.
///
/// ```ignore
/// use idem::idempotent;
///
/// #[idempotent(key = req.order_id, ttl = "24h")]
/// async fn charge(req: &ChargeRequest) -> Result<Receipt, PaymentError> {
///     gateway.charge(req).await // runs once per order_id
/// }
/// ```
///
/// # Options
///
/// | option | meaning | default |
/// |---|---|---|
/// | `key = EXPR` | the idempotency key: any `Display` value, or a tuple literal `(a, b, ...)` of them. Evaluated once, before the body, from the borrowed arguments | required |
/// | `ttl = "24h"` or a `Duration` expression | how long a completed result is kept and replayed | the configured default |
/// | `lease = "30s"` or a `Duration` expression | how long a claim lives without renewal; renewed every `lease / 3` while the body runs (at least `3ms`) | the configured default |
/// | `wait = "10s"` or a `Duration` expression | how long a concurrent duplicate waits for the in-flight call; `"0s"` rejects it at once | the configured default |
/// | `fingerprint = EXPR` | a `Serialize` value (usually the request), hashed and stored: the same key with another fingerprint is an error, never a wrong replay | none |
/// | `cache_err = true`, `false` or a closure `\|e: &E\| -> bool` | which `Err` results are permanent, stored and replayed; the others release the key so a retry runs again | `false` |
/// | `abandoned = "rerun"` or `"fail"` | what a call does when an earlier attempt began and never ended: run again as the next attempt, or fail with `Error::Abandoned` until an operator forgets or completes the key; either marks each attempt (one more round trip) and gives the body its number (`CallContext::attempt`). Not with `tx` | the configured policy (`IDEM_ABANDONED`); none: run again, unmarked |
/// | `scope = "name"` | the namespace of the keys, a string literal | the function's path, `module::fn_name` |
/// | `store = EXPR` | the store for this function, anything `Into<StoreHandle>` | the configured store |
/// | `tx = ARG` | (feature `postgres`, `sqlite` or `mysql`) transactional mode: `ARG` names the argument `&mut sqlx::PgConnection`, `&mut sqlx::SqliteConnection` or `&mut sqlx::MySqlConnection` through which the claim and the result are written, in the caller's transaction, so that they commit or roll back with the body's writes; duplicates wait on the database's lock, not on a lease; an unstored `Err` rolls the body's writes back to a savepoint. Not with `store` | none |
/// | `crate = path` | where `idem` is, when it is re-exported | `::idem` |
///
/// Duration literals (`"250ms"`, `"30s"`, `"24h"`, `"7d"`, ...) are checked at compile time.
/// `ttl` must be at least `1ms` and `lease` at least `3ms`, as everywhere in `idem`: a literal
/// below that is a compile error; a `Duration` expression below it fails each call with
/// `idem::Error::Config`, in the same words.
///
/// # Return types
///
/// - `Result<T, E>` (any type whose path ends in `Result`, such as `io::Result<T>`): `T` must
///   be `Serialize + DeserializeOwned`, and `E: From<idem::Error>` carries the idempotency
///   failures (store down, call in progress, key mismatch). An `Err` is not stored unless
///   `cache_err` says so, and then `E` must be `Serialize + DeserializeOwned` too.
/// - any other `T`, `()` included: `T` must be `Serialize + DeserializeOwned`, and the
///   function's return type becomes `Result<T, idem::Error>`.
///
/// # Where it goes
///
/// On any `async fn`: free functions, methods taking `&self`, `&mut self` or `self`, generic
/// functions, functions taking references (nothing needs to be `'static`), and functions in
/// `impl` blocks and trait impls. In a trait impl, return a `Result`: a plain `T` would change
/// the signature away from the trait's.
///
/// The default scope is the module path and the function's name, so two methods with the same
/// name in the same module share their keys unless one of them sets `scope`.
///
/// ```ignore
/// struct Ledger { /* ... */ }
///
/// impl Ledger {
///     #[idempotent(
///         key = (tenant, transfer.id),
///         fingerprint = transfer,
///         ttl = "7d",
///         wait = "0s",
///         cache_err = |e: &LedgerError| e.is_permanent(),
///     )]
///     async fn transfer(&self, tenant: &str, transfer: &Transfer) -> Result<Receipt, LedgerError> {
///         self.apply(tenant, transfer).await
///     }
/// }
/// ```
///
/// Every misuse is a compile error on the offending token: an unknown or repeated option, a
/// missing `key`, a bad duration, a fn that is not `async`, a return or error type that can't
/// be stored.
#[proc_macro_attribute]
pub fn idempotent(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::idempotent(args.into(), item.into()).into()
}
