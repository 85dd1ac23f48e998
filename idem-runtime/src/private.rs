//! The support the `#[idempotent]` attribute's generated code calls. Not a public API: it
//! changes with the macro, and users reach it only through generated code.

use std::fmt::Display;
use std::future::Future;

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use crate::abandoned::Abandoned;
pub use crate::call::Call;
pub use crate::error::Error;
pub use crate::store::StoreHandle;
pub use core::time::Duration;

/// The call of an `#[idempotent]` function: its key is built as a `String` already (by
/// [`key`] or [`KeyBuilder`]), which the call takes as it is.
pub fn call(scope: &'static str, key: String) -> Call {
    Call::keyed(scope.into(), key)
}

/// The key of a call whose `key =` is one `Display` value: a tuple of one part.
pub fn key<K: Display + ?Sized>(key: &K) -> String {
    crate::key::one_part(key.to_string())
}

/// Builds the key of a call whose `key =` is a tuple: each part escaped and joined (see the
/// store key format in `key.rs`), so that `("a:b", "c")`, `("a", "b:c")` and `"a:b:c"` are
/// three different keys.
#[derive(Default)]
pub struct KeyBuilder {
    parts: crate::key::Parts,
}

impl KeyBuilder {
    /// An empty key.
    pub fn new() -> Self {
        KeyBuilder::default()
    }

    /// Appends one part.
    pub fn part<K: Display + ?Sized>(mut self, part: &K) -> Self {
        self.parts.push(&part.to_string());
        self
    }

    /// The finished key.
    pub fn finish(self) -> String {
        self.parts.finish()
    }
}

/// Compile-time check that a function's stored type can be stored: `Serialize +
/// DeserializeOwned`. The macro calls it with the span of the return type.
#[diagnostic::on_unimplemented(
    message = "the return type of an #[idempotent] function must be `Serialize + DeserializeOwned`",
    note = "idem stores the result and replays it to later callers: derive `serde::Serialize` and `serde::Deserialize` for `{Self}`"
)]
pub trait Storable: Serialize + DeserializeOwned {}
// Not shown in errors: the trait's own message is the one to read, once, rather than one
// error per missing serde trait.
#[diagnostic::do_not_recommend]
impl<T: Serialize + DeserializeOwned> Storable for T {}

/// Zero-cost assertion that `T` can be stored and replayed.
pub fn assert_storable<T: Storable>() {}

/// Compile-time check that a function's error type can carry idempotency failures.
#[diagnostic::on_unimplemented(
    message = "the error type of an #[idempotent] function must implement `From<idem::Error>`",
    note = "idempotency failures (store down, call in progress, key mismatch) are returned as `{Self}`: add a variant such as `#[error(transparent)] Idempotency(#[from] idem::Error)`"
)]
pub trait ErrorType: From<Error> {}
// Not shown in errors: the trait's own message is the one to read, once, rather than one
// error per missing serde trait.
#[diagnostic::do_not_recommend]
impl<E: From<Error>> ErrorType for E {}

/// Compile-time check that a `cache_err` error type can be stored.
#[diagnostic::on_unimplemented(
    message = "with `cache_err`, the error type of an #[idempotent] function must be `Serialize + DeserializeOwned`",
    note = "idem stores permanent errors and replays them: derive `serde::Serialize` and `serde::Deserialize` for `{Self}`"
)]
pub trait CacheableError: Serialize + DeserializeOwned {}
// Not shown in errors: the trait's own message is the one to read, once, rather than one
// error per missing serde trait.
#[diagnostic::do_not_recommend]
impl<E: Serialize + DeserializeOwned> CacheableError for E {}

/// Zero-cost assertion that the error type can carry idempotency failures.
pub fn assert_error_type<E: ErrorType>() {}

/// Zero-cost assertion that a `cache_err` error type can be stored.
pub fn assert_cacheable_error<E: CacheableError>() {}

/// The `Ok` and `Err` types of a function returning any `Result` (also aliases such as
/// `io::Result<T>`).
pub trait ResultLike: Sized {
    /// The success type.
    type Ok;
    /// The error type.
    type Err;
    /// Into a plain `Result`.
    fn into_result(self) -> Result<Self::Ok, Self::Err>;
    /// From a plain `Result`.
    fn from_result(result: Result<Self::Ok, Self::Err>) -> Self;
}

impl<T, E> ResultLike for Result<T, E> {
    type Ok = T;
    type Err = E;
    fn into_result(self) -> Self {
        self
    }
    fn from_result(result: Self) -> Self {
        result
    }
}

/// Runs a function returning a plain `T` (rewritten to `Result<T, idem::Error>`).
/// The engine's future itself: a future of this function around it would be one more layer
/// to poll, and to copy whole, on every call.
pub fn run_plain<T, F>(call: Call, body: F) -> impl Future<Output = Result<T, Error>>
where
    T: Serialize + DeserializeOwned,
    F: Future<Output = T>,
{
    call.run_value(body)
}

/// Runs a function returning `Result<T, E>`: `Ok` is stored, `Err` releases the key. The
/// idempotency failure, if any, is turned into `E` by [`lift`], which the macro spans at the
/// error type so that a missing `From<idem::Error>` is reported there, once.
pub async fn try_run_result<R, F>(call: Call, body: F) -> Result<R, Error>
where
    R: ResultLike,
    R::Ok: Serialize + DeserializeOwned,
    F: Future<Output = R>,
{
    let body = async move { body.await.into_result() };
    call.run_result(body)
        .await
        .map(|outcome| R::from_result(outcome.value))
}

/// The function's own result, or the idempotency failure converted into its error type.
pub fn lift<R>(result: Result<R, Error>) -> R
where
    R: ResultLike,
    R::Err: From<Error>,
{
    result.unwrap_or_else(|error| R::from_result(Err(R::Err::from(error))))
}

/// Runs a function returning `Result<T, E>` with `cache_err`: `Ok` is stored, and so is every
/// `Err` for which `cache_err` returns true; other errors release the key.
pub async fn run_result_caching<R, F, P>(call: Call, cache_err: P, body: F) -> R
where
    R: ResultLike,
    R::Ok: Serialize + DeserializeOwned,
    R::Err: Serialize + DeserializeOwned + From<Error>,
    F: Future<Output = R>,
    P: FnOnce(&R::Err) -> bool,
{
    let body = async move { body.await.into_result() };
    R::from_result(match call.run_result_caching(cache_err, body).await {
        Ok(outcome) => outcome.value,
        Err(error) => Err(R::Err::from(error)),
    })
}

/// `cache_err = true`: every error is permanent.
pub fn cache_every_error<E>(_: &E) -> bool {
    true
}

#[cfg(any(feature = "postgres", feature = "sqlite", feature = "mysql"))]
pub use self::tx::*;

/// Wraps the code `tx = conn` generates: passed through with the `postgres`, `sqlite` or `mysql`
/// feature.
#[cfg(any(feature = "postgres", feature = "sqlite", feature = "mysql"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __idem_with_tx {
    ($($code:tt)*) => { $($code)* };
}

/// Without a database feature, the code `tx = conn` generates is one error naming them.
#[cfg(not(any(feature = "postgres", feature = "sqlite", feature = "mysql")))]
#[doc(hidden)]
#[macro_export]
macro_rules! __idem_with_tx {
    ($($code:tt)*) => {
        ::core::compile_error!(
            "`tx = ...` needs the feature of the database of the idem-fn package: in Cargo.toml, `idem-fn = { version = \"0.2\", features = [\"postgres\"] }` (or `\"sqlite\"`, `\"mysql\"`)"
        )
    };
}

pub use crate::__idem_with_tx as with_tx;

/// The runners of `tx = conn` (feature `postgres`, `sqlite` or `mysql`).
#[cfg(any(feature = "postgres", feature = "sqlite", feature = "mysql"))]
mod tx {
    use serde::Serialize;
    use serde::de::DeserializeOwned;

    use super::{Call, Error, ResultLike};
    pub use crate::store::tx::TxConnection;

    /// The argument `tx = ` names, as one of the connections it may be: the macro calls
    /// `<ArgType as TxArgument>::connection(arg)` with the argument type's own spans, so that
    /// another type is one error, on it. The engine then writes through the store that the
    /// connection's type names (its `Transactional` impl, see `store/tx.rs`). The body
    /// receives the argument under its own name and type, so only connections themselves are
    /// arguments (a transaction is passed by the caller as `&mut *transaction`).
    #[diagnostic::on_unimplemented(
        message = "`tx = ...` must name an argument of type `&mut sqlx::PgConnection`, `&mut sqlx::SqliteConnection` or `&mut sqlx::MySqlConnection` of sqlx 0.9, or `&mut tokio_postgres::Client` or `&mut tokio_postgres::Transaction<'_>` of tokio-postgres 0.7 (or `&mut deadpool_postgres::ClientWrapper` of deadpool-postgres 0.14), not `{Self}`",
        label = "the connection the record is written through, inside its transaction",
        note = "declare the argument as `conn: &mut sqlx::PgConnection` (or `SqliteConnection`, `MySqlConnection`), and call the function with `&mut *transaction` (a `sqlx::Transaction`) or `&mut *connection` (a pool's connection); on tokio-postgres, as `conn: &mut tokio_postgres::Transaction<'_>` (or `&mut tokio_postgres::Client`, outside a transaction), called with `&mut transaction` (a deadpool-postgres `Transaction` or `Object` derefs to them)",
        note = "idem's transactional mode uses sqlx 0.9, with the feature of each database (`postgres`, `sqlite`, `mysql`), and tokio-postgres 0.7 with the feature `tokio-postgres`: a connection of another version is another type of the same name; `cargo tree -i sqlx` (or `-i tokio-postgres`) lists the versions in your build"
    )]
    pub trait TxArgument<'c, C: TxConnection + ?Sized + 'c> {
        /// The connection.
        fn connection(self) -> &'c mut C;
    }

    #[cfg(feature = "postgres")]
    impl<'c> TxArgument<'c, sqlx::PgConnection> for &'c mut sqlx::PgConnection {
        fn connection(self) -> &'c mut sqlx::PgConnection {
            self
        }
    }

    #[cfg(feature = "tokio-postgres")]
    impl<'c> TxArgument<'c, tokio_postgres::Client> for &'c mut tokio_postgres::Client {
        fn connection(self) -> &'c mut tokio_postgres::Client {
            self
        }
    }

    #[cfg(feature = "tokio-postgres")]
    impl<'c, 't> TxArgument<'c, tokio_postgres::Transaction<'t>>
        for &'c mut tokio_postgres::Transaction<'t>
    {
        fn connection(self) -> &'c mut tokio_postgres::Transaction<'t> {
            self
        }
    }

    /// A pool's client, which idem's statements are prepared in the cache of: the body
    /// receives it (callers pass `&mut object`, which derefs to it).
    #[cfg(feature = "deadpool-postgres")]
    impl<'c> TxArgument<'c, deadpool_postgres::ClientWrapper>
        for &'c mut deadpool_postgres::ClientWrapper
    {
        fn connection(self) -> &'c mut deadpool_postgres::ClientWrapper {
            self
        }
    }

    #[cfg(feature = "sqlite")]
    impl<'c> TxArgument<'c, sqlx::SqliteConnection> for &'c mut sqlx::SqliteConnection {
        fn connection(self) -> &'c mut sqlx::SqliteConnection {
            self
        }
    }

    #[cfg(feature = "mysql")]
    impl<'c> TxArgument<'c, sqlx::MySqlConnection> for &'c mut sqlx::MySqlConnection {
        fn connection(self) -> &'c mut sqlx::MySqlConnection {
            self
        }
    }

    /// `tx = conn` on a function returning a plain `T`.
    pub async fn run_plain_tx<A, T, B>(call: Call, conn: &mut A, body: B) -> Result<T, Error>
    where
        A: TxConnection + ?Sized,
        T: Serialize + DeserializeOwned,
        B: AsyncFnOnce(&mut A::Conn) -> T,
    {
        call.run_tx(conn, body).await.map(|outcome| outcome.value)
    }

    /// `tx = conn` on a function returning `Result<T, E>`: `Ok` is stored with the body's
    /// writes, `Err` rolls them back to a savepoint. See [`lift`](super::lift).
    pub async fn try_run_result_tx<A, R, B>(call: Call, conn: &mut A, body: B) -> Result<R, Error>
    where
        A: TxConnection + ?Sized,
        R: ResultLike,
        R::Ok: Serialize + DeserializeOwned,
        B: AsyncFnOnce(&mut A::Conn) -> R,
    {
        let body = async move |conn: &mut A::Conn| body(conn).await.into_result();
        call.run_result_tx(conn, body)
            .await
            .map(|outcome| R::from_result(outcome.value))
    }

    /// `tx = conn` with `cache_err`: `Ok` and the errors `cache_err` says are permanent are
    /// stored with the body's writes; other errors roll them back to a savepoint.
    pub async fn run_result_caching_tx<A, R, B, P>(
        call: Call,
        conn: &mut A,
        cache_err: P,
        body: B,
    ) -> R
    where
        A: TxConnection + ?Sized,
        R: ResultLike,
        R::Ok: Serialize + DeserializeOwned,
        R::Err: Serialize + DeserializeOwned + From<Error>,
        B: AsyncFnOnce(&mut A::Conn) -> R,
        P: FnOnce(&R::Err) -> bool,
    {
        let body = async move |conn: &mut A::Conn| body(conn).await.into_result();
        R::from_result(
            match call.run_result_caching_tx(conn, cache_err, body).await {
                Ok(outcome) => outcome.value,
                Err(error) => Err(R::Err::from(error)),
            },
        )
    }

    /// `tx = conn` with `cache_err = true`: every result is stored with the body's writes (no
    /// savepoint).
    pub async fn run_result_storing_errors_tx<A, R, B>(call: Call, conn: &mut A, body: B) -> R
    where
        A: TxConnection + ?Sized,
        R: ResultLike,
        R::Ok: Serialize + DeserializeOwned,
        R::Err: Serialize + DeserializeOwned + From<Error>,
        B: AsyncFnOnce(&mut A::Conn) -> R,
    {
        let body = async move |conn: &mut A::Conn| body(conn).await.into_result();
        R::from_result(match call.run_result_storing_errors_tx(conn, body).await {
            Ok(outcome) => outcome.value,
            Err(error) => Err(R::Err::from(error)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tuple_parts_are_escaped() {
        let a = KeyBuilder::new().part("a:b").part("c").finish();
        let b = KeyBuilder::new().part("a").part("b:c").finish();
        assert_ne!(a, b);
        assert_eq!(a, r"a\:b:c");
        assert_eq!(KeyBuilder::new().part(&7).part("x\\").finish(), r"7:x\\");
        assert_eq!(key("a:b"), r"a\:b");
        assert_eq!(key("a:b"), KeyBuilder::new().part("a:b").finish());
    }
}
