//! Server-issued tokens on a `redis-server` the test starts: one command per issue and per
//! redemption, counted by the server (`MONITOR`), and what Redis holds for them.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use idem::store::{Redemption, TokenKey};
use idem::{Call, Config, Idem, RedisStore, Status, tokens};

use support::redis::RedisServer;

fn calls(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs
        .iter()
        .map(|(name, n)| (name.to_string(), *n))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuing_and_redeeming_are_one_command_each() {
    let server = RedisServer::start();
    let store = RedisStore::open(&server.url()).await.unwrap();
    let idem = Idem::with_settings(store.clone(), &Config::default());
    let ttl = Duration::from_secs(600);
    // Warms up the pool's connection, so that only the operations' own commands are counted.
    idem.scope(tokens::issue("warm-up", ttl)).await.unwrap();

    let monitor = server.monitor();
    let token = idem.scope(tokens::issue("forms", ttl)).await.unwrap();
    assert_eq!(monitor.stop(), calls(&[("set", 1)]), "SET NX PX");

    let monitor = server.monitor();
    idem.scope(tokens::issue_bounded("forms", ttl, 3))
        .await
        .unwrap();
    assert_eq!(
        monitor.stop(),
        calls(&[("evalsha", 1)]),
        "one script, loaded at connect"
    );

    for expected in [Redemption::Valid, Redemption::Redeemed] {
        let monitor = server.monitor();
        let redeemed = idem.scope(tokens::redeem("forms", &token)).await.unwrap();
        assert_eq!(redeemed, expected);
        assert_eq!(monitor.stop(), calls(&[("evalsha", 1)]), "one script");
    }
    let monitor = server.monitor();
    let forged = idem.scope(tokens::redeem("forms", "AAAAAAAAAAAAAAAAAAAAAA"));
    assert_eq!(forged.await.unwrap(), Redemption::Unknown);
    assert_eq!(monitor.stop(), calls(&[("evalsha", 1)]), "one script");
    let monitor = server.monitor();
    let malformed = idem.scope(tokens::redeem("forms", "not a token"));
    assert_eq!(malformed.await.unwrap(), Redemption::Unknown);
    assert_eq!(monitor.stop(), calls(&[]), "not a token's form: no command");

    // What Redis holds: the redeemed token, a string with an expiry, and never a call key.
    let key = TokenKey::new("idem", "forms", &token);
    let held: String = server.cmd(&["GET", key.record()]);
    assert_eq!(held, "redeemed");
    let left: i64 = server.cmd(&["PTTL", key.record()]);
    assert!(left > 0, "a redeemed token expires: {left}");
    let kind: String = server.cmd(&["TYPE", key.group()]);
    assert_eq!(kind, "zset", "the bounded scope's group");
    assert!(
        key.record().starts_with("idem:#token:{"),
        "{}",
        key.record()
    );

    // A submission keyed by a token: the redemption, then the call's claim and completion; the
    // double submission: the redemption and the replaying claim.
    let token = idem.scope(tokens::issue("forms", ttl)).await.unwrap();
    let monitor = server.monitor();
    let first = Call::new("forms", &token)
        .store(store.clone())
        .redeeming()
        .run(async { 7 })
        .await
        .unwrap();
    assert_eq!(first.status, Status::Executed);
    assert_eq!(monitor.stop(), calls(&[("set", 1), ("evalsha", 2)]));
    let monitor = server.monitor();
    let again = Call::new("forms", &token)
        .store(store.clone())
        .redeeming()
        .run(async { 8 })
        .await
        .unwrap();
    assert_eq!((again.value, again.status), (7, Status::Replayed));
    assert_eq!(monitor.stop(), calls(&[("set", 1), ("evalsha", 1)]));
}

/// The redeemed token's expiry is set at its first redemption, to the call's ttl and lease,
/// and a duplicate leaves it there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_does_not_extend_the_redeemed_token() {
    let server = RedisServer::start();
    let store = RedisStore::open(&server.url()).await.unwrap();
    let config = Config::default()
        .ttl(Duration::from_secs(100))
        .lease(Duration::from_secs(20));
    let idem = Idem::with_settings(store, &config);
    let token = idem
        .scope(tokens::issue("forms", Duration::from_secs(5)))
        .await
        .unwrap();
    let key = TokenKey::new("idem", "forms", &token);
    let left = || server.cmd::<i64>(&["PTTL", key.record()]);
    assert!(left() <= 5_000, "the token's own ttl: {}", left());
    let redeemed = idem.scope(tokens::redeem("forms", &token)).await.unwrap();
    assert_eq!(redeemed, Redemption::Valid);
    let first = left();
    assert!(
        (110_000..=120_000).contains(&first),
        "ttl + lease from the redemption: {first}"
    );
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let again = idem.scope(tokens::redeem("forms", &token)).await.unwrap();
    assert_eq!(again, Redemption::Redeemed);
    assert!(
        left() <= first - 1_000,
        "not extended: {} after {first}",
        left()
    );
}
