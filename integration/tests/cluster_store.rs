//! `RedisStore` on a real Redis Cluster of three masters started by the test: keys spread over
//! every master, each call costs on the cluster what it costs on one server, waiters are woken
//! by sharded pub/sub, and URLs of the wrong kind are clear configuration errors.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use idem::store::Claim;
use idem::{Call, Config, Error, Idem, RedisStore, Status, Store};
use tokio::time::Instant;

use support::cluster::RedisCluster;
use support::redis::RedisServer;

fn calls(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(name, n)| (name.to_string(), *n))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_spread_over_every_master_and_a_call_costs_what_it_costs_on_one_server() {
    const KEYS: usize = 60;
    let cluster = RedisCluster::start(3, 0);
    let store = RedisStore::open(&cluster.url()).await.unwrap();
    assert!(store.describe().starts_with("redis+cluster://127.0.0.1:"));
    // Warm up: one call per master, so that only the calls' own commands are counted below.
    let masters = cluster.masters();
    assert_eq!(masters.len(), 3);
    let mut warmed = 0;
    for i in 0.. {
        let key = format!("warm-{i}");
        let owner = cluster.owner_of_key(&format!("idem:spread:{key}")).port();
        if masters[warmed].port() == owner {
            Call::new("spread", key)
                .store(store.clone())
                .run(async { 0 })
                .await
                .unwrap();
            warmed += 1;
            if warmed == masters.len() {
                break;
            }
        }
    }

    // Which master each key lives on, as the cluster itself says.
    let keys: Vec<String> = (0..KEYS).map(|i| format!("order-{i}")).collect();
    let mut expected: BTreeMap<u16, Vec<String>> = BTreeMap::new();
    for key in &keys {
        let stored = format!("idem:spread:{key}");
        expected
            .entry(cluster.owner_of_key(&stored).port())
            .or_default()
            .push(stored);
    }
    assert_eq!(expected.len(), 3, "{KEYS} keys land on all three masters");

    let monitors: Vec<_> = masters.iter().map(|m| m.monitor()).collect();
    let started = Instant::now();
    for (i, key) in keys.iter().enumerate() {
        let first = Call::new("spread", key.as_str())
            .store(store.clone())
            .run(async move { i })
            .await
            .unwrap();
        assert_eq!((first.value, first.status), (i, Status::Executed));
    }
    let first_calls = started.elapsed();
    for (master, monitor) in masters.iter().zip(monitors) {
        let n = expected[&master.port()].len() as u64;
        assert_eq!(
            monitor.stop(),
            calls(&[("set", n), ("evalsha", n)]),
            "master {}: each of its {n} first calls is SET NX GET and EVALSHA, nothing else",
            master.port()
        );
    }

    let monitors: Vec<_> = masters.iter().map(|m| m.monitor()).collect();
    let started = Instant::now();
    for (i, key) in keys.iter().enumerate() {
        let again = Call::new("spread", key.as_str())
            .store(store.clone())
            .run(async { usize::MAX })
            .await
            .unwrap();
        assert_eq!((again.value, again.status), (i, Status::Replayed));
    }
    let replays = started.elapsed();
    for (master, monitor) in masters.iter().zip(monitors) {
        let n = expected[&master.port()].len() as u64;
        assert_eq!(
            monitor.stop(),
            calls(&[("set", n)]),
            "master {}: each of its {n} replays is one SET NX GET",
            master.port()
        );
    }
    eprintln!("{KEYS} first calls in {first_calls:?}, {KEYS} replays in {replays:?}");

    // Every master holds the records of its slots, and only those.
    for master in &masters {
        let mut held: Vec<String> = master
            .keys()
            .into_iter()
            .filter(|k| k.starts_with("idem:spread:order-"))
            .collect();
        held.sort();
        let mut wanted = expected[&master.port()].clone();
        wanted.sort();
        assert!(!held.is_empty(), "master {} holds records", master.port());
        assert_eq!(
            held,
            wanted,
            "master {} holds its slots' records",
            master.port()
        );
        assert!(master.dbsize() >= held.len() as u64);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_is_woken_by_sharded_pub_sub_within_milliseconds() {
    let cluster = RedisCluster::start(3, 0);
    let store = RedisStore::open(&cluster.url()).await.unwrap();
    for round in 0..3 {
        let key = format!("idem:wake:{round}");
        let owner = cluster.owner_of_key(&key);
        let holder = Claim::new(None);
        assert_eq!(
            store
                .claim(&key, &holder, Duration::from_secs(30))
                .await
                .unwrap(),
            None
        );
        let waiting = tokio::spawn({
            let store = store.clone();
            let key = key.clone();
            let holder = holder.clone();
            async move { store.wait(&key, &holder, Duration::from_secs(10)).await }
        });
        // The waiter subscribed (SSUBSCRIBE) on the node that holds the key.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let (_, subscribers): (String, u64) =
                owner.cmd(&["PUBSUB", "SHARDNUMSUB", key.as_str()]);
            if subscribers == 1 {
                break;
            }
            assert!(Instant::now() < deadline, "the waiter never subscribed");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let completed = Instant::now();
        store
            .complete(&key, &holder, b"{}", Duration::from_secs(60))
            .await
            .unwrap();
        waiting.await.unwrap().unwrap();
        let woken = completed.elapsed();
        // Well under the 250 ms a cluster waiter sleeps at most between looks: pub/sub woke it.
        assert!(
            woken < Duration::from_millis(150),
            "woken {woken:?} after the completion"
        );
        eprintln!("round {round}: woken {woken:?} after the completion");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idem_store_names_the_cluster_and_urls_of_the_wrong_kind_are_config_errors() {
    let cluster = RedisCluster::start(3, 0);
    let url = cluster.url();
    let config = Config::from_lookup(|name| (name == "IDEM_STORE").then(|| url.clone())).unwrap();
    let idem = Idem::connect(&config).await.unwrap();
    assert_eq!(idem.store().describe(), url);
    let outcome = idem
        .scope(Call::new("env", "k").run(async { 5 }))
        .await
        .unwrap();
    assert_eq!((outcome.value, outcome.status), (5, Status::Executed));
    let again = idem
        .scope(Call::new("env", "k").run(async { 6 }))
        .await
        .unwrap();
    assert_eq!((again.value, again.status), (5, Status::Replayed));

    // One node of the cluster named as a single server.
    let node = &cluster.nodes()[0];
    match RedisStore::open(&node.url()).await {
        Err(Error::Config(message)) => {
            assert!(message.contains("redis+cluster://"), "{message}")
        }
        other => panic!("expected a config error, got {other:?}"),
    }
    // Seeds where nothing listens: a connect error, at once.
    let nowhere = format!(
        "redis+cluster://127.0.0.1:{},127.0.0.1:{}",
        support::redis::free_port(),
        support::redis::free_port()
    );
    let started = Instant::now();
    match RedisStore::open(&nowhere).await {
        Err(Error::Connect { source, .. }) => {
            assert_eq!(source.kind(), idem::StoreErrorKind::Unavailable, "{source}")
        }
        other => panic!("expected a connect error, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // A single server named as a cluster.
    let single = RedisServer::start();
    let as_cluster = format!("redis+cluster://127.0.0.1:{}", single.port());
    match RedisStore::open(&as_cluster).await {
        Err(Error::Config(message)) => {
            assert!(message.contains("not part of a Redis Cluster"), "{message}")
        }
        other => panic!("expected a config error, got {other:?}"),
    }
}
