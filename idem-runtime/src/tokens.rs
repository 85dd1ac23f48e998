//! Server-issued single-use tokens: the server hands a client a token before a submission
//! (a form, a checkout), the submission carries it, and redeeming it is the validation.
//!
//! ```
//! # use idem_runtime as idem;
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), idem::Error> {
//! use std::time::Duration;
//! use idem::tokens::{self, Redemption};
//!
//! idem::with_store(idem::MemoryStore::new(), async {
//!     // The page that shows the form asks for a token and puts it in a hidden field.
//!     let token = tokens::issue("shop::checkout", Duration::from_secs(600)).await?;
//!     // The submission: the token is its call's key. The body runs once.
//!     let order = idem::Call::new("shop::checkout", &token)
//!         .redeeming()
//!         .run(async { 42_u64 })
//!         .await?;
//!     assert!(!order.replayed());
//!     // The double click: the same token replays the first submission's result.
//!     let again = idem::Call::new("shop::checkout", &token)
//!         .redeeming()
//!         .run::<u64, _>(async { unreachable!("replayed") })
//!         .await?;
//!     assert_eq!((again.value, again.replayed()), (42, true));
//!     // A token the server never issued is refused before any body runs.
//!     let forged = idem::Call::new("shop::checkout", "AAAAAAAAAAAAAAAAAAAAAA")
//!         .redeeming()
//!         .run::<u64, _>(async { unreachable!("refused") })
//!         .await;
//!     assert!(matches!(forged, Err(idem::Error::UnknownToken { .. })));
//!     // Redeeming by hand answers which of the three it is.
//!     let other = tokens::issue("shop::checkout", Duration::from_secs(600)).await?;
//!     assert_eq!(tokens::redeem("shop::checkout", &other).await?, Redemption::Valid);
//!     assert_eq!(tokens::redeem("shop::checkout", &other).await?, Redemption::Redeemed);
//!     assert_eq!(tokens::redeem("shop::refund", &other).await?, Redemption::Unknown);
//!     Ok(())
//! })
//! .await
//! # }
//! ```
//!
//! **Tokens.** 128 bits from the operating system's entropy (through `rand`'s thread-local
//! generator, a CSPRNG seeded by the OS), written as 22 characters of URL-safe base64 without
//! padding (`A–Z a–z 0–9 - _`): unguessable, and safe in a URL, a header or a form field.
//!
//! **Redeeming is one atomic store operation** that answers all three cases at once: valid
//! (it consumed the token), unknown (never issued in this scope, or expired) or already
//! redeemed. There is no read followed by a delete to race: of 64 concurrent redemptions of a
//! token exactly one is valid. A redeemed token is kept, marked redeemed, for the ttl and lease
//! of the call it keys, so a second submission is told apart from a forgery for as long as the
//! first one's result is replayed.
//!
//! **No constant-time comparison is needed**: the store looks the token up by its key (a hash
//! table, a B-tree, Redis's keyspace); it never compares the submitted string with the valid
//! tokens one by one, so the time it takes says nothing about how many characters of a guess
//! match a real token. What an attacker could learn from timing is whether a key exists, and
//! that is what the answer itself says; a guess still has 2^128 possibilities.
//!
//! **Scopes.** A token is issued for a scope and redeems only in that scope: the HTTP layer
//! uses the principal's namespace, so another user's token is unknown. Tokens live in a key
//! space of their own (see [`TokenKey`]): a client-chosen idempotency key never reaches a
//! token, and a token never reaches a call's record except as the key of the call it
//! redeems.
//!
//! **The store down.** Issuing and redeeming fail with [`Error::Store`] whatever the fail
//! mode: a token that cannot be checked is never taken as valid.

use std::time::Duration;

use std::future::Future;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::call::Call;
use crate::context::Idem;
use crate::error::Error;
use crate::outcome::Outcome;
use crate::store::{Issue, StoreHandle};
pub use crate::store::{Redemption, TokenKey};

/// The length of a token: 16 random bytes in unpadded base64url.
pub const TOKEN_LEN: usize = 22;

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// A new token: 128 random bits, base64url.
fn new_token() -> String {
    let bits: u128 = rand::random();
    // 22 digits of 6 bits are 132 bits: the first digit holds the top 2 bits of 128.
    (0..TOKEN_LEN)
        .rev()
        .map(|at| char::from(ALPHABET[((bits >> (6 * at)) & 0x3f) as usize]))
        .collect()
}

/// Whether `text` has the form of a token. Anything else is unknown without asking a store,
/// and never becomes part of a store key.
pub fn is_well_formed(text: &str) -> bool {
    text.len() == TOKEN_LEN && text.bytes().all(|b| ALPHABET.contains(&b))
}

/// The store and key prefix of the idem a call made here would use, with `store` instead of
/// its store when given.
pub(crate) fn resolve(store: Option<&StoreHandle>) -> Result<(StoreHandle, String), Error> {
    match store {
        Some(store) => Ok(Idem::with_current_or_unconfigured(|idem| {
            (store.clone(), idem.settings.prefix.clone())
        })),
        None => Idem::with_current(|idem| (idem.store.clone(), idem.settings.prefix.clone())),
    }
}

/// How long a redeemed token is kept: the ttl and lease of the call it keys (`None`: the
/// configured ones), so that a second submission is recognized while its result is replayed.
pub(crate) fn keep(ttl: Option<Duration>, lease: Option<Duration>) -> Duration {
    Idem::with_current_or_unconfigured(|idem| {
        let settings = &idem.settings;
        ttl.unwrap_or(settings.ttl) + lease.unwrap_or(settings.lease)
    })
}

/// Issues a token of `scope` on `store`, live for `ttl`, within `max_live` when given.
pub(crate) async fn issue_on(
    store: &StoreHandle,
    prefix: &str,
    scope: &str,
    ttl: Duration,
    max_live: Option<u32>,
) -> Result<String, Error> {
    crate::config::check_ttl(ttl)?;
    let token = new_token();
    let key = TokenKey::new(prefix, scope, &token);
    match store.issue_token(&key, ttl, max_live).await {
        Ok(Issue::Full) => Err(Error::TooManyTokens {
            scope: scope.to_owned(),
            max_live: max_live.unwrap_or(0),
        }),
        Ok(_) => Ok(token),
        Err(source) => Err(Error::Store {
            key: key.group().to_owned(),
            source,
        }),
    }
}

/// Redeems `token` of `scope` on `store`, keeping it as redeemed for `keep`.
pub(crate) async fn redeem_on(
    store: &StoreHandle,
    prefix: &str,
    scope: &str,
    token: &str,
    keep: Duration,
) -> Result<Redemption, Error> {
    if !is_well_formed(token) {
        return Ok(Redemption::Unknown);
    }
    let key = TokenKey::new(prefix, scope, token);
    store
        .redeem_token(&key, keep)
        .await
        .map_err(|source| Error::Store {
            key: key.group().to_owned(),
            source,
        })
}

/// Issues a new token of `scope` in the configured store, live for `ttl` (at least 1ms), and
/// returns it. Hand it to the client that will submit; see the [module](self) for the flow.
///
/// Fails with [`Error::Store`] when the store fails or does not support tokens, with
/// [`Error::Config`] for a ttl under 1ms or when no idem is installed.
pub async fn issue(scope: &str, ttl: Duration) -> Result<String, Error> {
    let (store, prefix) = resolve(None)?;
    issue_on(&store, &prefix, scope, ttl, None).await
}

/// Like [`issue`], unless `scope` already holds `max_live` tokens issued by this function
/// whose ttl has not ended, redeemed or not: then [`Error::TooManyTokens`] and no token. The
/// bound is exact under concurrent issues (one atomic store operation); it is a rate limit,
/// at most `max_live` tokens per `ttl` for a scope (a principal, in the HTTP layer).
///
/// ```
/// # use idem_runtime as idem;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), idem::Error> {
/// use std::time::Duration;
/// idem::with_store(idem::MemoryStore::new(), async {
///     let ttl = Duration::from_secs(60);
///     idem::tokens::issue_bounded("user-7", ttl, 2).await?;
///     idem::tokens::issue_bounded("user-7", ttl, 2).await?;
///     let third = idem::tokens::issue_bounded("user-7", ttl, 2).await;
///     assert!(matches!(third, Err(idem::Error::TooManyTokens { max_live: 2, .. })));
///     Ok(())
/// })
/// .await
/// # }
/// ```
pub async fn issue_bounded(scope: &str, ttl: Duration, max_live: u32) -> Result<String, Error> {
    let (store, prefix) = resolve(None)?;
    issue_on(&store, &prefix, scope, ttl, Some(max_live)).await
}

/// Redeems `token` of `scope` in the configured store, in one atomic operation:
/// [`Redemption::Valid`] the first time (exactly one of concurrent redemptions),
/// [`Redemption::Redeemed`] after, [`Redemption::Unknown`] for a token never issued in this
/// scope, expired, or not of a token's form. A redeemed token is kept for the configured ttl
/// and lease, so that a second submission is recognized for as long as a call's result is.
///
/// To run a call keyed by the token, use [`Call::redeeming`](crate::Call::redeeming), which
/// redeems and then replays the first submission's result to the second.
///
/// Fails with [`Error::Store`] when the store fails or does not support tokens, and with
/// [`Error::Config`] when no idem is installed.
pub async fn redeem(scope: &str, token: &str) -> Result<Redemption, Error> {
    let (store, prefix) = resolve(None)?;
    redeem_on(&store, &prefix, scope, token, keep(None, None)).await
}

/// A [`Call`] whose key is a server-issued token of its scope, made by
/// [`Call::redeeming`]: each run method redeems the token, then runs the call (a valid or an
/// already redeemed token) or fails with [`Error::UnknownToken`] (a token never issued or
/// expired) before the body runs.
#[must_use = "a TokenCall does nothing until one of its run methods is awaited"]
#[derive(Debug)]
pub struct TokenCall {
    call: Call,
}

impl TokenCall {
    pub(crate) fn new(call: Call) -> Self {
        TokenCall { call }
    }

    /// Redeems the call's key as a token of its scope: `Ok` for a valid token or one redeemed
    /// before, [`Error::UnknownToken`] otherwise.
    pub(crate) async fn admit(&self) -> Result<(), Error> {
        let request = self.call.request();
        let (store, prefix) = resolve(request.store.as_ref())?;
        let keep = keep(request.ttl, request.lease);
        let scope = &request.scope;
        match redeem_on(&store, &prefix, scope, &request.key, keep).await? {
            Redemption::Unknown => Err(Error::UnknownToken {
                scope: scope.to_string(),
            }),
            _ => Ok(()),
        }
    }

    /// [`Call::run`], once the token is redeemed.
    pub async fn run<T, F>(self, body: F) -> Result<Outcome<T>, Error>
    where
        T: Serialize + DeserializeOwned,
        F: Future<Output = T>,
    {
        self.admit().await?;
        self.call.run(body).await
    }

    /// [`Call::run_result`], once the token is redeemed.
    pub async fn run_result<T, E, F>(self, body: F) -> Result<Outcome<Result<T, E>>, Error>
    where
        T: Serialize + DeserializeOwned,
        F: Future<Output = Result<T, E>>,
    {
        self.admit().await?;
        self.call.run_result(body).await
    }

    /// [`Call::run_result_caching`], once the token is redeemed.
    pub async fn run_result_caching<T, E, F, P>(
        self,
        cache_err: P,
        body: F,
    ) -> Result<Outcome<Result<T, E>>, Error>
    where
        T: Serialize + DeserializeOwned,
        E: Serialize + DeserializeOwned,
        F: Future<Output = Result<T, E>>,
        P: FnOnce(&E) -> bool,
    {
        self.admit().await?;
        self.call.run_result_caching(cache_err, body).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_22_url_safe_characters_and_differ() {
        let a = new_token();
        assert_eq!(a.len(), TOKEN_LEN);
        assert!(is_well_formed(&a), "{a}");
        assert_ne!(a, new_token());
        assert!(!is_well_formed("short"));
        assert!(!is_well_formed("AAAAAAAAAAAAAAAAAAAAA:"));
        assert!(!is_well_formed("AAAAAAAAAAAAAAAAAAAAA="));
    }

    #[test]
    fn every_bit_reaches_the_token() {
        // The first digit takes the top two bits, the last the low six.
        let mut seen = [false; 64];
        for _ in 0..2000 {
            let token = new_token();
            seen[ALPHABET
                .iter()
                .position(|&c| c == token.as_bytes()[21])
                .unwrap()] = true;
            assert!(b"ABCD".contains(&token.as_bytes()[0]), "{token}");
        }
        assert!(seen.iter().all(|s| *s));
    }
}
