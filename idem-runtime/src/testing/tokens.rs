//! The conformance cases of server-issued tokens ([`Store::issue_token`] and
//! [`Store::redeem_token`]): one redemption wins, unknown and expired tokens are refused, a
//! redeemed token's duplicate replays, the bound holds, and the operator's count sees them.
//!
//! A store that does not implement tokens (the trait's defaults, "does not support tokens")
//! passes them.
//!
//! [`Store::issue_token`]: crate::Store::issue_token
//! [`Store::redeem_token`]: crate::Store::redeem_token

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Barrier;

use super::bounded::within;
use crate::store::Redemption;
use crate::{Call, Config, Error, Idem, Status, StoreHandle, tokens};

/// A scope no other case or run uses.
fn scope(case: &str) -> String {
    format!(
        "conformance::tokens::{case}::{:016x}",
        rand::random::<u64>()
    )
}

/// An idem on `store` with a prefix of its own, so that counts see this case's tokens only.
fn idem_on(store: &StoreHandle) -> Idem {
    let prefix = format!("tk{:016x}", rand::random::<u64>());
    Idem::with_settings(store.clone(), &Config::default().prefix(prefix))
}

/// Whether `error` is the trait's default: this store has no tokens.
fn unsupported(error: &Error) -> bool {
    matches!(error, Error::Store { source, .. }
        if source.kind() == crate::StoreErrorKind::Other
            && source.to_string().contains("does not support tokens"))
}

/// 64 concurrent redemptions of one token: exactly one is valid, the others are told it was
/// redeemed; a second token is untouched by them.
pub async fn tokens_redeem_once_under_concurrency(store: StoreHandle) {
    const REDEEMERS: usize = 64;
    let idem = idem_on(&store);
    let scope = scope("once");
    let ttl = Duration::from_secs(60);
    let token = match idem.scope(tokens::issue(&scope, ttl)).await {
        Err(error) if unsupported(&error) => return,
        other => other.expect("a token is issued"),
    };
    let untouched = idem.scope(tokens::issue(&scope, ttl)).await.unwrap();
    assert_ne!(token, untouched);
    let start = Arc::new(Barrier::new(REDEEMERS));
    let mut tasks = Vec::new();
    for _ in 0..REDEEMERS {
        let (idem, scope, token, start) =
            (idem.clone(), scope.clone(), token.clone(), start.clone());
        tasks.push(tokio::spawn(async move {
            within("the other redeemers at the start", start.wait()).await;
            idem.scope(tokens::redeem(&scope, &token)).await
        }));
    }
    let (mut valid, mut redeemed) = (0, 0);
    for task in tasks {
        match within("a redeemer", task).await.expect("redeemer task") {
            Ok(Redemption::Valid) => valid += 1,
            Ok(Redemption::Redeemed) => redeemed += 1,
            other => panic!("a redemption of a live token answered {other:?}"),
        }
    }
    assert_eq!(
        (valid, redeemed),
        (1, REDEEMERS - 1),
        "exactly one of {REDEEMERS} concurrent redemptions is valid"
    );
    let second = idem.scope(tokens::redeem(&scope, &untouched)).await;
    assert_eq!(
        second.unwrap(),
        Redemption::Valid,
        "another token stays live"
    );
}

/// A token never issued, one of another scope, one that is not of a token's form, and one
/// whose ttl ended are all unknown; a call keyed by one of them fails before its body runs.
pub async fn tokens_unknown_and_expired_are_refused(store: StoreHandle) {
    let idem = idem_on(&store);
    let scope = scope("refused");
    let ttl = Duration::from_secs(60);
    let issued = match idem.scope(tokens::issue(&scope, ttl)).await {
        Err(error) if unsupported(&error) => return,
        other => other.unwrap(),
    };
    let redeem = |scope: String, token: String| {
        let idem = idem.clone();
        async move { idem.scope(tokens::redeem(&scope, &token)).await.unwrap() }
    };
    let forged = "AAAAAAAAAAAAAAAAAAAAAA".to_owned();
    assert_eq!(
        redeem(scope.clone(), forged.clone()).await,
        Redemption::Unknown
    );
    let elsewhere = format!("{scope}-other");
    assert_eq!(
        redeem(elsewhere, issued.clone()).await,
        Redemption::Unknown,
        "a token redeems in its own scope only"
    );
    for malformed in [
        "",
        "short",
        "AAAAAAAAAAAAAAAAAAAAA:",
        "AAAAAAAAAAAAAAAAAAAAAA*",
    ] {
        assert_eq!(
            redeem(scope.clone(), malformed.to_owned()).await,
            Redemption::Unknown,
            "{malformed:?}"
        );
    }
    let short = idem
        .scope(tokens::issue(&scope, Duration::from_millis(150)))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        redeem(scope.clone(), short.clone()).await,
        Redemption::Unknown,
        "an expired token is unknown"
    );
    let runs = AtomicUsize::new(0);
    for token in [forged, short] {
        let refused = idem
            .scope(
                Call::new(scope.clone(), &token)
                    .redeeming()
                    .run(async { runs.fetch_add(1, Ordering::SeqCst) }),
            )
            .await;
        assert!(
            matches!(refused, Err(Error::UnknownToken { .. })),
            "{refused:?}"
        );
    }
    assert_eq!(
        runs.load(Ordering::SeqCst),
        0,
        "no body ran for a refused token"
    );
    assert_eq!(
        redeem(scope, issued).await,
        Redemption::Valid,
        "the issued token is still live"
    );
}

/// A call keyed by a token runs once; the token's duplicates, at once and concurrently,
/// replay the first call's result instead of failing.
pub async fn tokens_redeemed_duplicate_replays(store: StoreHandle) {
    const DUPLICATES: usize = 16;
    let idem = idem_on(&store);
    let scope = scope("replay");
    let token = match idem
        .scope(tokens::issue(&scope, Duration::from_secs(60)))
        .await
    {
        Err(error) if unsupported(&error) => return,
        other => other.unwrap(),
    };
    let runs = Arc::new(AtomicUsize::new(0));
    let start = Arc::new(Barrier::new(DUPLICATES));
    let mut tasks = Vec::new();
    for submission in 0..DUPLICATES {
        let (idem, scope, token, runs, start) = (
            idem.clone(),
            scope.clone(),
            token.clone(),
            runs.clone(),
            start.clone(),
        );
        tasks.push(tokio::spawn(async move {
            within("the other submissions at the start", start.wait()).await;
            let call = Call::new(scope, &token)
                .ttl(Duration::from_secs(60))
                .wait(Duration::from_secs(10))
                .redeeming();
            idem.scope(call.run(async move {
                runs.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
                format!("order placed by submission {submission}")
            }))
            .await
        }));
    }
    let mut values = std::collections::HashSet::new();
    let mut executed = 0;
    for task in tasks {
        let outcome = within("a submission", task)
            .await
            .expect("submission task")
            .expect("every submission with the token gets the result");
        executed += usize::from(outcome.status == Status::Executed);
        values.insert(outcome.value);
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the body ran once");
    assert_eq!((executed, values.len()), (1, 1), "{values:?}");
    let later = idem
        .scope(
            Call::new(scope.clone(), &token)
                .redeeming()
                .run::<String, _>(async { unreachable!("a later duplicate replays") }),
        )
        .await
        .expect("a later duplicate replays");
    assert_eq!(later.status, Status::Replayed);
    assert!(values.contains(&later.value));
}

/// A bounded scope issues at most its bound of live tokens, exactly under concurrent issues,
/// and counts only its own; the operator's count sees live and redeemed tokens apart from the
/// records.
pub async fn tokens_bound_and_count(store: StoreHandle) {
    const BOUND: u32 = 5;
    const ASKS: usize = 16;
    let idem = idem_on(&store);
    let scope = scope("bound");
    let ttl = Duration::from_secs(60);
    let start = Arc::new(Barrier::new(ASKS));
    let mut tasks = Vec::new();
    for _ in 0..ASKS {
        let (idem, scope, start) = (idem.clone(), scope.clone(), start.clone());
        tasks.push(tokio::spawn(async move {
            within("the other issuers at the start", start.wait()).await;
            idem.scope(tokens::issue_bounded(&scope, ttl, BOUND)).await
        }));
    }
    let mut issued = Vec::new();
    let mut full = 0;
    for task in tasks {
        match within("an issuer", task).await.expect("issuer task") {
            Ok(token) => issued.push(token),
            Err(Error::TooManyTokens { max_live, .. }) => {
                assert_eq!(max_live, BOUND);
                full += 1;
            }
            Err(error) if unsupported(&error) => return,
            Err(error) => panic!("issuing failed: {error}"),
        }
    }
    assert_eq!(
        (issued.len(), full),
        (BOUND as usize, ASKS - BOUND as usize),
        "exactly the bound is issued"
    );
    let other = idem
        .scope(tokens::issue_bounded(&format!("{scope}-other"), ttl, BOUND))
        .await;
    assert!(other.is_ok(), "another scope has its own bound: {other:?}");
    let redeemed = idem.scope(tokens::redeem(&scope, &issued[0])).await;
    assert_eq!(redeemed.unwrap(), Redemption::Valid);
    let still = idem.scope(tokens::issue_bounded(&scope, ttl, BOUND)).await;
    assert!(
        matches!(still, Err(Error::TooManyTokens { .. })),
        "a redeemed token counts until its ttl ends (a rate limit): {still:?}"
    );
    let stats = match idem.scope(crate::stats(1000)).await {
        Err(Error::Store { source, .. }) if source.to_string().contains("does not support") => {
            return;
        }
        other => other.unwrap(),
    };
    assert_eq!(
        (stats.tokens, stats.redeemed_tokens, stats.total()),
        (BOUND as u64, 1, 0),
        "{stats:?}"
    );
}
