//! The local cache (`Config::local_cache`): a cached replay costs no store round trip, a call
//! in progress is never cached, a fingerprint mismatch is still detected, and a cached record
//! is never served after the store's record has expired. On a counting memory store (store
//! operations counted in process, time paused) and on a real `redis-server` (commands counted
//! by the server with `MONITOR`).

mod support;

use std::time::Duration;

use idem::testing::{Forwarding, Op};
use idem::{Call, Config, Error, Idem, MemoryStore, Status, with_store};
use tokio::sync::oneshot;
use tokio::time::Instant;

/// A memory store that counts the operations it is asked for ([`Forwarding::total_calls`],
/// [`claims`]). Its twists: [`Forwarding::hide_expiry`] hides the remaining lifetime of the
/// records it reports (as a store that cannot tell it would); [`delayed`] answers claims and
/// completions late (as a network would: the record's lifetime started before the caller
/// hears of it).
fn counting() -> Forwarding {
    Forwarding::new(MemoryStore::new())
}

/// A counting store that answers claims and completions `by` after it acted.
fn delayed(by: Duration) -> Forwarding {
    counting()
        .delay(Op::Claim, by)
        .delay(Op::ClaimWithExpiry, by)
        .delay(Op::Complete, by)
}

/// The claims `store` was asked for, with or without the remaining lifetime.
fn claims(store: &Forwarding) -> usize {
    store.calls(Op::Claim) + store.calls(Op::ClaimWithExpiry)
}

/// An idem over `store` with a local cache of 100 records.
fn cached(store: &Forwarding) -> Idem {
    Idem::with_settings(store.clone(), &Config::default().local_cache(100))
}

async fn charge(idem: &Idem, key: &str, amount: u32) -> Result<(u32, Status), Error> {
    let outcome = idem
        .scope(Call::new("shop::charge", key).run(async move { amount }))
        .await?;
    Ok((outcome.value, outcome.status))
}

/// Spawns `future` as a task that calls with `idem`.
fn spawn_with<F>(idem: &Idem, future: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let idem = idem.clone();
    tokio::spawn(async move { idem.scope(future).await })
}

#[tokio::test(start_paused = true)]
async fn a_cached_replay_costs_no_store_operation() {
    let store = counting();
    let idem = cached(&store);
    assert_eq!(
        charge(&idem, "o-1", 10).await.unwrap(),
        (10, Status::Executed)
    );
    assert_eq!(store.total_calls(), 2, "claim and complete");

    for _ in 0..5 {
        let replay = charge(&idem, "o-1", 99).await.unwrap();
        assert_eq!(replay, (10, Status::Replayed));
    }
    assert_eq!(
        store.total_calls(),
        2,
        "the replays came from the local cache"
    );

    // The same store without a local cache pays a claim per replay.
    let uncached = Idem::with_settings(store.clone(), &Config::default());
    assert_eq!(
        charge(&uncached, "o-1", 99).await.unwrap(),
        (10, Status::Replayed)
    );
    assert_eq!(store.total_calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_replay_from_the_store_fills_the_cache_when_the_store_tells_the_lifetime() {
    let store = counting();
    // Two processes sharing one store, each with its own local cache.
    let (one, two) = (cached(&store), cached(&store));
    assert_eq!(
        charge(&one, "o-1", 10).await.unwrap(),
        (10, Status::Executed)
    );
    assert_eq!(
        charge(&two, "o-1", 99).await.unwrap(),
        (10, Status::Replayed)
    );
    assert_eq!(claims(&store), 2, "the second process asked the store once");
    assert_eq!(
        charge(&two, "o-1", 99).await.unwrap(),
        (10, Status::Replayed)
    );
    assert_eq!(claims(&store), 2, "and then replayed from its cache");

    // A store that does not report the remaining lifetime: nothing is cached on replay.
    let blind = counting().hide_expiry();
    let (one, two) = (cached(&blind), cached(&blind));
    charge(&one, "o-1", 10).await.unwrap();
    for expected_claims in [2, 3, 4] {
        assert_eq!(
            charge(&two, "o-1", 99).await.unwrap(),
            (10, Status::Replayed)
        );
        assert_eq!(claims(&blind), expected_claims);
    }
}

#[tokio::test(start_paused = true)]
async fn a_call_in_progress_is_never_cached() {
    let store = counting();
    let idem = cached(&store);
    let (started_tx, started) = oneshot::channel();
    let (finish, finish_rx) = oneshot::channel::<()>();
    let holder = spawn_with(
        &idem,
        Call::new("shop::charge", "o-1").run(async move {
            started_tx.send(()).unwrap();
            finish_rx.await.unwrap();
            10_u32
        }),
    );
    idem::testing::within("the held call's body to start", started)
        .await
        .unwrap();

    // Every duplicate looks at the store, and finds the call still in progress.
    for n in 1..=3 {
        let duplicate = idem
            .scope(
                Call::new("shop::charge", "o-1")
                    .wait(Duration::ZERO)
                    .run(async { 99_u32 }),
            )
            .await;
        assert!(
            matches!(duplicate, Err(Error::InProgress { .. })),
            "{duplicate:?}"
        );
        assert_eq!(claims(&store), 1 + n);
    }

    finish.send(()).unwrap();
    assert_eq!(
        within("the holder's task", holder)
            .await
            .unwrap()
            .unwrap()
            .status,
        Status::Executed
    );
    let claimed = claims(&store);
    assert_eq!(
        charge(&idem, "o-1", 99).await.unwrap(),
        (10, Status::Replayed)
    );
    assert_eq!(claims(&store), claimed, "the completed record is cached");

    // An error releases the key: nothing is cached, and the next call runs again.
    let failed = idem
        .scope(Call::new("shop::charge", "o-2").run_result(async { Err::<u32, _>("transient") }))
        .await
        .unwrap();
    assert_eq!(failed.value, Err("transient"));
    assert_eq!(
        charge(&idem, "o-2", 20).await.unwrap(),
        (20, Status::Executed)
    );
}

#[tokio::test(start_paused = true)]
async fn a_completion_whose_lease_was_lost_is_not_cached() {
    let store = counting();
    let idem = cached(&store);
    // The first call outlives its lease (no renewal); a second call takes the key over and
    // completes first.
    let late = spawn_with(
        &idem,
        Call::new("shop::charge", "o-1")
            .lease(Duration::from_millis(50))
            .heartbeat(false)
            .run(async {
                tokio::time::sleep(Duration::from_millis(100)).await;
                1_u32
            }),
    );
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert_eq!(
        charge(&idem, "o-1", 2).await.unwrap(),
        (2, Status::Executed)
    );
    let late = within("the late call's task", late).await.unwrap().unwrap();
    assert_eq!((late.value, late.status), (1, Status::LeaseLost));

    let ops = store.total_calls();
    assert_eq!(
        charge(&idem, "o-1", 3).await.unwrap(),
        (2, Status::Replayed),
        "the stored result, not the one whose lease was lost"
    );
    assert_eq!(store.total_calls(), ops, "replayed from the cache");
}

#[tokio::test(start_paused = true)]
async fn a_fingerprint_mismatch_is_detected_in_the_cache() {
    let store = counting();
    let idem = cached(&store);
    let call = |request: &'static str| {
        idem.scope(
            Call::new("shop::charge", "o-1")
                .fingerprint(request)
                .run(async { 10_u32 }),
        )
    };
    assert_eq!(call("pay 10 EUR").await.unwrap().status, Status::Executed);
    let ops = store.total_calls();
    assert_eq!(call("pay 10 EUR").await.unwrap().status, Status::Replayed);
    let mismatch = call("pay 99 EUR").await;
    assert!(
        matches!(mismatch, Err(Error::KeyMismatch { .. })),
        "{mismatch:?}"
    );
    assert_eq!(store.total_calls(), ops, "both answered from the cache");
}

#[tokio::test(start_paused = true)]
async fn a_cached_record_is_never_served_after_the_store_expired_it() {
    // Two processes on one store, which answers 10 ms after it acted: each record's lifetime
    // has started 10 ms before a process hears of it.
    let store = delayed(Duration::from_millis(10));
    let (one, two) = (cached(&store), cached(&store));
    async fn call(idem: &Idem, amount: u32) -> Result<(u32, Status), Error> {
        let outcome = idem
            .scope(
                Call::new("shop::charge", "o-1")
                    .ttl(Duration::from_millis(100))
                    .run(async move { amount }),
            )
            .await?;
        Ok((outcome.value, outcome.status))
    }
    let start = Instant::now();
    let at = |ms: u64| async move {
        let target = start + Duration::from_millis(ms);
        tokio::time::advance(target - Instant::now()).await;
    };

    // Claimed at 0, completed at 10 (the record lives until 110), known at 20.
    assert_eq!(call(&one, 1).await.unwrap(), (1, Status::Executed));
    // The second process claims at 80 and hears at 90 that 30 ms are left.
    at(80).await;
    assert_eq!(call(&two, 2).await.unwrap(), (1, Status::Replayed));
    at(109).await;
    let claimed = claims(&store);
    assert_eq!(call(&one, 3).await.unwrap(), (1, Status::Replayed));
    assert_eq!(call(&two, 4).await.unwrap(), (1, Status::Replayed));
    assert_eq!(
        claims(&store),
        claimed,
        "both still cached within the record's lifetime"
    );

    // The store's record ends at 110: neither cache serves it any more. Both ask at 110 (a
    // copy served too long would come back at once, with the old value).
    at(110).await;
    let (one, two) = tokio::join!(call(&one, 5), call(&two, 6));
    assert_eq!(one.unwrap(), (5, Status::Executed));
    assert_eq!(two.unwrap(), (5, Status::Waited));
}

#[tokio::test(start_paused = true)]
async fn calls_on_another_store_skip_the_cache() {
    let configured = counting();
    let idem = cached(&configured);
    assert_eq!(charge(&idem, "o-1", 10).await.unwrap().1, Status::Executed);

    let other = counting();
    let elsewhere = idem
        .scope(
            Call::new("shop::charge", "o-1")
                .store(other.clone())
                .run(async { 20_u32 }),
        )
        .await
        .unwrap();
    assert_eq!((elsewhere.value, elsewhere.status), (20, Status::Executed));
    let scoped = idem
        .scope(with_store(
            other.clone(),
            Call::new("shop::charge", "o-1").run(async { 30_u32 }),
        ))
        .await
        .unwrap();
    assert_eq!((scoped.value, scoped.status), (20, Status::Replayed));
    assert_eq!(claims(&other), 2);
}

#[cfg(feature = "redis")]
mod on_redis {
    use std::collections::BTreeMap;

    use idem::RedisStore;

    use super::*;
    use crate::support::redis::RedisServer;

    fn calls(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
        pairs
            .iter()
            .map(|(name, n)| (name.to_string(), *n))
            .collect()
    }

    async fn cached_on(server: &RedisServer) -> Idem {
        let config = Config::default().store(server.url()).local_cache(100);
        Idem::connect(&config)
            .await
            .expect("connect to the test's redis-server")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cached_replay_sends_no_command() {
        let server = RedisServer::start();
        let idem = cached_on(&server).await;
        let monitor = server.monitor();
        assert_eq!(
            charge(&idem, "o-1", 10).await.unwrap(),
            (10, Status::Executed)
        );
        assert_eq!(
            monitor.stop(),
            calls(&[("set", 1), ("pttl", 1), ("evalsha", 1)]),
            "with the cache on, a claim asks for the record's lifetime in the same round trip"
        );

        let monitor = server.monitor();
        for _ in 0..5 {
            assert_eq!(
                charge(&idem, "o-1", 99).await.unwrap(),
                (10, Status::Replayed)
            );
        }
        assert_eq!(monitor.stop(), calls(&[]), "five replays, no command");

        // Without the cache, the same replay is one command.
        let store = RedisStore::open(&server.url()).await.unwrap();
        let monitor = server.monitor();
        let uncached = Idem::with_settings(store, &Config::default());
        assert_eq!(
            charge(&uncached, "o-1", 99).await.unwrap(),
            (10, Status::Replayed)
        );
        assert_eq!(monitor.stop(), calls(&[("set", 1)]));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn in_progress_goes_to_redis_and_a_mismatch_is_detected_from_the_cache() {
        let server = RedisServer::start();
        let idem = cached_on(&server).await;
        let (started_tx, started) = oneshot::channel();
        let (finish, finish_rx) = oneshot::channel::<()>();
        let holder = spawn_with(
            &idem,
            Call::new("shop::charge", "o-1")
                .fingerprint("pay 10")
                .run(async move {
                    started_tx.send(()).unwrap();
                    finish_rx.await.unwrap();
                    10_u32
                }),
        );
        idem::testing::within("the held call's body to start", started)
            .await
            .unwrap();

        let monitor = server.monitor();
        for _ in 0..3 {
            let duplicate = idem
                .scope(
                    Call::new("shop::charge", "o-1")
                        .fingerprint("pay 10")
                        .wait(Duration::ZERO)
                        .run(async { 99_u32 }),
                )
                .await;
            assert!(
                matches!(duplicate, Err(Error::InProgress { .. })),
                "{duplicate:?}"
            );
        }
        assert_eq!(
            monitor.stop(),
            calls(&[("set", 3), ("pttl", 3)]),
            "each duplicate asked Redis"
        );

        finish.send(()).unwrap();
        assert_eq!(
            within("the holder's task", holder)
                .await
                .unwrap()
                .unwrap()
                .status,
            Status::Executed
        );
        let monitor = server.monitor();
        let mismatch = idem
            .scope(
                Call::new("shop::charge", "o-1")
                    .fingerprint("pay 99")
                    .run(async { 99_u32 }),
            )
            .await;
        assert!(
            matches!(mismatch, Err(Error::KeyMismatch { .. })),
            "{mismatch:?}"
        );
        assert_eq!(monitor.stop(), calls(&[]), "detected in the cache");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cached_record_ends_no_later_than_in_redis() {
        let server = RedisServer::start();
        let idem = cached_on(&server).await;
        let call = |amount: u32| {
            idem.scope(
                Call::new("shop::charge", "o-1")
                    .ttl(Duration::from_millis(200))
                    .run(async move { amount }),
            )
        };
        assert_eq!(call(1).await.unwrap().status, Status::Executed);
        let monitor = server.monitor();
        assert_eq!(call(2).await.unwrap().value, 1);
        assert_eq!(monitor.stop(), calls(&[]));

        // Once Redis has expired the record, the cache does not serve it either.
        tokio::time::sleep(Duration::from_millis(250)).await;
        let key: Option<String> = server.cmd(&["GET", "idem:shop.charge:o-1"]);
        assert_eq!(key, None, "Redis expired the record");
        let monitor = server.monitor();
        let again = call(3).await.unwrap();
        assert_eq!((again.value, again.status), (3, Status::Executed));
        assert_eq!(
            monitor.stop(),
            calls(&[("set", 1), ("pttl", 1), ("evalsha", 1)])
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_record_completed_by_another_process_is_cached_until_redis_expires_it() {
        let server = RedisServer::start();
        // Another process, without a cache, completes the record with a 300 ms ttl.
        let elsewhere = Idem::with_settings(
            RedisStore::open(&server.url()).await.unwrap(),
            &Config::default(),
        );
        async fn call(idem: &Idem, amount: u32) -> Result<idem::Outcome<u32>, Error> {
            idem.scope(
                Call::new("shop::charge", "o-1")
                    .ttl(Duration::from_millis(300))
                    .fingerprint("pay")
                    .run(async move { amount }),
            )
            .await
        }
        assert_eq!(call(&elsewhere, 1).await.unwrap().status, Status::Executed);

        // The first replay here asks Redis once (the record and its lifetime, one round
        // trip); the next ones are answered from the cache. The store is opened by hand, not
        // from the Config that turns the cache on: the engine asks for the lifetime per call.
        let idem = Idem::with_settings(
            RedisStore::open(&server.url()).await.unwrap(),
            &Config::default().local_cache(100),
        );
        let monitor = server.monitor();
        let first = call(&idem, 2).await.unwrap();
        assert_eq!((first.value, first.status), (1, Status::Replayed));
        assert_eq!(monitor.stop(), calls(&[("set", 1), ("pttl", 1)]));
        let monitor = server.monitor();
        for _ in 0..5 {
            let again = call(&idem, 3).await.unwrap();
            assert_eq!((again.value, again.status), (1, Status::Replayed));
        }
        assert_eq!(monitor.stop(), calls(&[]), "five replays, no command");
        let mismatch = idem
            .scope(
                Call::new("shop::charge", "o-1")
                    .fingerprint("pay more")
                    .run(async { 4_u32 }),
            )
            .await;
        assert!(
            matches!(mismatch, Err(Error::KeyMismatch { .. })),
            "{mismatch:?}"
        );

        // The cached copy ends no later than Redis's record: once that expired, the key runs.
        tokio::time::sleep(Duration::from_millis(350)).await;
        let key: Option<String> = server.cmd(&["GET", "idem:shop.charge:o-1"]);
        assert_eq!(key, None, "Redis expired the record");
        let after = call(&idem, 5).await.unwrap();
        assert_eq!((after.value, after.status), (5, Status::Executed));
    }
}

/// Awaits a task's end, failing the test naming `what` if it never comes (the tests' time is
/// paused: the bound is reached as soon as nothing else can run).
async fn within<T>(
    what: &str,
    task: tokio::task::JoinHandle<T>,
) -> Result<T, tokio::task::JoinError> {
    tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .unwrap_or_else(|_| panic!("waited 60 s for {what}, which never ended"))
}
