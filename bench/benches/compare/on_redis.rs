//! The Redis rows: idem on `RedisStore` against raw commands on one multiplexed connection,
//! the hand-written pattern and the peers, with one caller and with 64; and idem on an
//! application's deadpool-redis pool (`RedisStore::from_deadpool`) against the default store.

use std::future::Future;
use std::hint::black_box;
use std::time::Duration;

use idem::{Config, Idem, RedisStore};
use redis::AsyncConnectionConfig;
use redis::aio::MultiplexedConnection;

use crate::measure::{Op, Plan, latency, latency_pair, throughput, throughput_pair};
use crate::naive;
use crate::peers::{self, CachedStore, PeerStore};
use crate::report::{Quantity, Report, Target};
use crate::workload::{TTL, below, charge, direct, fresh, store_key};

/// Concurrent callers of the throughput rows.
pub const CALLERS: usize = 64;

/// Keys of the replay rows: replays ask for one of them at random.
const REPLAYED: u64 = 1_024;

/// What the Redis rows share.
pub struct Setup {
    /// A connection of the benchmark's own, for the raw commands.
    pub conn: MultiplexedConnection,
    /// idem with the default configuration.
    pub idem: Idem,
    /// idem with a local cache (and another prefix).
    pub cached: Idem,
    /// idem on a deadpool-redis pool of the default size (`RedisStore::from_deadpool`), with
    /// the default configuration otherwise: the same records as `idem`.
    pub deadpool: Idem,
    pub cached_crate: CachedStore,
    pub idempotent_crate: PeerStore,
}

impl Setup {
    pub async fn new(url: &str) -> Setup {
        let client = redis::Client::open(url).expect("the server's URL");
        // Long commands (FLUSHALL, pipelines of 10k SETs) outlast redis-rs's default timeout.
        let config =
            AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(60)));
        let conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .expect("connect to the benchmark's redis-server");
        let config = Config::default().store(url);
        let idem = Idem::connect(&config).await.expect("idem: connect");
        // Its own prefix, and the local cache on: its replays come from the cache (records it
        // completed itself, or replayed once from Redis with their remaining lifetime).
        let cached = Idem::connect(&config.clone().prefix("l1").local_cache(100_000))
            .await
            .expect("idem: connect");
        let pool = deadpool_redis::Config::from_url(url)
            .create_pool(Some(deadpool_redis::Runtime::Tokio1))
            .expect("a deadpool-redis pool");
        let deadpool = RedisStore::from_deadpool(pool)
            .await
            .expect("idem: from_deadpool");
        let deadpool = Idem::with_settings(deadpool, &config);
        let setup = Setup {
            conn,
            idem,
            cached,
            deadpool,
            cached_crate: peers::cached_store(url).await,
            idempotent_crate: peers::idempotent_store(url).await,
        };
        for order in 0..REPLAYED {
            setup.idem.scope(charge(order)).await.unwrap();
            setup.cached.scope(charge(order)).await.unwrap();
            peers::cached_fill(&setup.cached_crate, order).await;
            peers::idempotent_call(&setup.idempotent_crate, order).await;
            naive::charge(&mut setup.conn.clone(), order).await;
        }
        setup
    }
}

async fn raw_get(conn: &mut MultiplexedConnection, key: &str) {
    let value: Option<Vec<u8>> = redis::cmd("GET")
        .arg(key)
        .query_async(conn)
        .await
        .expect("GET");
    assert!(black_box(value).is_some(), "the key is stored");
}

fn nanos(stats: &crate::measure::Stats) -> Quantity {
    Quantity::Nanos(stats.median)
}

/// One caller: each call waits for the previous one.
pub async fn one_caller(report: &mut Report, plan: &Plan, setup: &Setup) {
    report.section("Redis, one caller (latency)");
    let key = store_key(7);
    let mut conn = setup.conn.clone();

    let (get, replay) = setup
        .idem
        .scope(latency_pair(
            plan,
            async || raw_get(&mut conn, &key).await,
            async || {
                black_box(charge(black_box(7)).await.unwrap());
            },
        ))
        .await;
    report.add_pair(
        "replay",
        "raw GET",
        (get, replay),
        Quantity::Nanos,
        Some(Target::RatioAtMost(1.3)),
    );

    let mut conn = setup.conn.clone();
    let (get, first) = setup
        .idem
        .scope(latency_pair(
            plan,
            async || raw_get(&mut conn, &key).await,
            async || {
                black_box(charge(fresh()).await.unwrap());
            },
        ))
        .await;
    report.add_pair(
        "first call",
        "raw GET",
        (get, first),
        Quantity::Nanos,
        Some(Target::RatioAtMost(2.6)),
    );

    let mut conn = setup.conn.clone();
    let (two, first) = setup
        .idem
        .scope(latency_pair(
            plan,
            async || {
                raw_get(&mut conn, &key).await;
                raw_get(&mut conn, &key).await;
            },
            async || {
                black_box(charge(fresh()).await.unwrap());
            },
        ))
        .await;
    report.add_pair(
        "first call",
        "2 raw GETs in a row",
        (two, first),
        Quantity::Nanos,
        None,
    );

    let (default, pooled) = latency_pair(
        plan,
        async || {
            black_box(setup.idem.scope(charge(black_box(7))).await.unwrap());
        },
        async || {
            black_box(setup.deadpool.scope(charge(black_box(7))).await.unwrap());
        },
    )
    .await;
    report.add_pair(
        "replay on a deadpool-redis pool (`from_deadpool`)",
        "replay on the default store",
        (default, pooled),
        Quantity::Nanos,
        None,
    );

    let (default, pooled) = latency_pair(
        plan,
        async || {
            black_box(setup.idem.scope(charge(fresh())).await.unwrap());
        },
        async || {
            black_box(setup.deadpool.scope(charge(fresh())).await.unwrap());
        },
    )
    .await;
    report.add_pair(
        "first call on a deadpool-redis pool (`from_deadpool`)",
        "first call on the default store",
        (default, pooled),
        Quantity::Nanos,
        None,
    );

    let (base, replay) = setup
        .cached
        .scope(latency_pair(
            plan,
            async || {
                black_box(direct(black_box(7)).await);
            },
            async || {
                black_box(charge(black_box(7)).await.unwrap());
            },
        ))
        .await;
    report.add_pair(
        "replay from the local cache (L1)",
        "direct call",
        (base, replay),
        Quantity::Nanos,
        Some(Target::OverheadAtMost(250.0)),
    );

    let mut conn = setup.conn.clone();
    let (hand, first) = setup
        .idem
        .scope(latency_pair(
            plan,
            async || {
                black_box(naive::charge(&mut conn, fresh()).await);
            },
            async || {
                black_box(charge(fresh()).await.unwrap());
            },
        ))
        .await;
    report.add_pair(
        "first call",
        "hand-written pattern",
        (hand, first),
        Quantity::Nanos,
        None,
    );

    let crate_store = setup.cached_crate.clone();
    let (peer, replay) = setup
        .idem
        .scope(latency_pair(
            plan,
            async || {
                black_box(peers::cached_read(&crate_store, below(REPLAYED)).await);
            },
            async || {
                black_box(charge(below(REPLAYED)).await.unwrap());
            },
        ))
        .await;
    report.add_pair(
        "replay",
        "`cached` read",
        (peer, replay),
        Quantity::Nanos,
        Some(Target::RatioAtMost(1.0)),
    );

    let peer_store = setup.idempotent_crate.clone();
    let (peer, replay) = setup
        .idem
        .scope(latency_pair(
            plan,
            async || {
                black_box(peers::idempotent_call(&peer_store, below(REPLAYED)).await);
            },
            async || {
                black_box(charge(below(REPLAYED)).await.unwrap());
            },
        ))
        .await;
    report.add_pair(
        "replay",
        "`idempotent` replay",
        (peer, replay),
        Quantity::Nanos,
        Some(Target::RatioAtMost(1.0)),
    );

    let (peer, first) = setup
        .idem
        .scope(latency_pair(
            plan,
            async || {
                black_box(peers::idempotent_call(&peer_store, fresh()).await);
            },
            async || {
                black_box(charge(fresh()).await.unwrap());
            },
        ))
        .await;
    report.add_pair(
        "first call",
        "`idempotent` first call",
        (peer, first),
        Quantity::Nanos,
        Some(Target::RatioAtMost(1.0)),
    );
}

fn rate(stats: &crate::measure::Stats) -> Quantity {
    Quantity::PerSecond(stats.median)
}

/// An operation for 64 callers: `call` run with a clone of `with` (a connection, a store, an
/// idem) each time.
fn each<W, F, Fut>(with: W, call: F) -> impl Op + Clone
where
    W: Clone + Send + Sync + 'static,
    F: Fn(W) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
    move || call(with.clone())
}

/// Adds a row comparing `subject`'s calls per second with `base`'s (sampled in turn), judged
/// by `at_least`.
async fn rate_row(
    report: &mut Report,
    plan: &Plan,
    (row, base_name): (&str, &str),
    base: impl Op,
    subject: impl Op,
    at_least: f64,
) {
    let pair = throughput_pair(plan, CALLERS, base, subject).await;
    let target = Some(Target::RatioAtLeast(at_least));
    report.add_pair(row, base_name, pair, Quantity::PerSecond, target);
}

/// 64 callers at once, on one client thread.
pub async fn concurrent(report: &mut Report, plan: &Plan, setup: &Setup) {
    report.section("Redis, 64 concurrent callers (calls/s)");
    let raw = each(setup.conn.clone(), |mut conn| async move {
        raw_get(&mut conn, &store_key(below(REPLAYED))).await
    });
    let replay = each(setup.idem.clone(), |idem| async move {
        black_box(idem.scope(charge(below(REPLAYED))).await.unwrap());
    });
    let first = each(setup.idem.clone(), |idem| async move {
        black_box(idem.scope(charge(fresh())).await.unwrap());
    });
    let hand = each(setup.conn.clone(), |mut conn| async move {
        black_box(naive::charge(&mut conn, fresh()).await);
    });
    let crate_read = each(setup.cached_crate.clone(), |store| async move {
        black_box(peers::cached_read(&store, below(REPLAYED)).await);
    });
    let peer_replay = each(setup.idempotent_crate.clone(), |store| async move {
        black_box(peers::idempotent_call(&store, below(REPLAYED)).await);
    });
    let peer_first = each(setup.idempotent_crate.clone(), |store| async move {
        black_box(peers::idempotent_call(&store, fresh()).await);
    });
    let local = each(setup.cached.clone(), |idem| async move {
        black_box(idem.scope(charge(below(REPLAYED))).await.unwrap());
    });

    rate_row(
        report,
        plan,
        ("replays/s", "raw GETs/s"),
        raw.clone(),
        replay.clone(),
        0.8,
    )
    .await;
    rate_row(
        report,
        plan,
        ("first calls/s", "raw GETs/s"),
        raw,
        first.clone(),
        0.4,
    )
    .await;
    rate_row(
        report,
        plan,
        ("first calls/s", "hand-written pattern"),
        hand,
        first.clone(),
        2.0,
    )
    .await;
    rate_row(
        report,
        plan,
        ("replays/s", "`cached` reads/s"),
        crate_read,
        replay.clone(),
        1.0,
    )
    .await;
    rate_row(
        report,
        plan,
        ("replays/s", "`idempotent` replays/s"),
        peer_replay,
        replay,
        1.0,
    )
    .await;
    rate_row(
        report,
        plan,
        ("first calls/s", "`idempotent` first calls/s"),
        peer_first,
        first,
        1.0,
    )
    .await;

    let pooled_replay = each(setup.deadpool.clone(), |idem| async move {
        black_box(idem.scope(charge(below(REPLAYED))).await.unwrap());
    });
    let pooled_first = each(setup.deadpool.clone(), |idem| async move {
        black_box(idem.scope(charge(fresh())).await.unwrap());
    });
    let default_replay = each(setup.idem.clone(), |idem| async move {
        black_box(idem.scope(charge(below(REPLAYED))).await.unwrap());
    });
    let default_first = each(setup.idem.clone(), |idem| async move {
        black_box(idem.scope(charge(fresh())).await.unwrap());
    });
    let pair = throughput_pair(plan, CALLERS, default_replay, pooled_replay).await;
    report.add_pair(
        "replays/s on a deadpool-redis pool (`from_deadpool`)",
        "replays/s on the default store",
        pair,
        Quantity::PerSecond,
        None,
    );
    let pair = throughput_pair(plan, CALLERS, default_first, pooled_first).await;
    report.add_pair(
        "first calls/s on a deadpool-redis pool (`from_deadpool`)",
        "first calls/s on the default store",
        pair,
        Quantity::PerSecond,
        None,
    );

    let replays = throughput(plan, CALLERS, local).await;
    report.add(
        "replays/s from the local cache (L1)",
        (rate(&replays), Some(replays)),
        None,
        None,
    );
}

/// The cost of a replay of a random live key with 1k, 100k and 1M live keys, and the bytes of
/// one record.
pub async fn scaling(report: &mut Report, plan: &Plan, setup: &Setup) {
    report.section("Redis, scaling: replay of a random live key");
    let mut conn = setup.conn.clone();
    let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await.unwrap();
    wait_for_lazy_free(&mut conn).await;
    // Every key holds the record idem wrote for order 0.
    setup.idem.scope(charge(0)).await.unwrap();
    let record: Vec<u8> = redis::cmd("GET")
        .arg(store_key(0))
        .query_async(&mut conn)
        .await
        .unwrap();
    let before = used_memory(&mut conn).await;
    let mut filled = 1;
    let mut first = None;
    for (live, label) in [(1_000u64, "1k"), (100_000, "100k"), (1_000_000, "1M")] {
        while filled < live {
            let mut pipe = redis::pipe();
            for order in filled..live.min(filled + 10_000) {
                pipe.cmd("SET")
                    .arg(store_key(order))
                    .arg(&record)
                    .arg("PX")
                    .arg(TTL.as_millis() as u64)
                    .ignore();
            }
            let _: () = pipe.query_async(&mut conn).await.unwrap();
            filled = live.min(filled + 10_000);
        }
        let cost = setup
            .idem
            .scope(latency(plan, async || {
                black_box(charge(below(live)).await.unwrap());
            }))
            .await;
        let base = first.get_or_insert_with(|| cost.clone()).clone();
        if live == 1_000 {
            report.add(
                &format!("{label} live keys"),
                (nanos(&cost), Some(cost)),
                None,
                None,
            );
        } else {
            report.add(
                &format!("{label} live keys"),
                (nanos(&cost), Some(cost)),
                Some(("with 1k keys", nanos(&base), Some(base))),
                Some(Target::RatioAtMost(1.5)),
            );
        }
    }
    let after = used_memory(&mut conn).await;

    report.section("Bytes per stored record");
    let usage: i64 = redis::cmd("MEMORY")
        .arg("USAGE")
        .arg(store_key(500_000))
        .arg("SAMPLES")
        .arg(0)
        .query_async(&mut conn)
        .await
        .unwrap();
    report.add(
        &format!(
            "Redis, `MEMORY USAGE` of one record ({}-byte key, {}-byte value)",
            store_key(500_000).len(),
            record.len()
        ),
        (Quantity::Bytes(usage as f64), None),
        None,
        None,
    );
    report.add(
        "Redis, `used_memory` growth per record (1M records)",
        (Quantity::Bytes((after - before) as f64 / 999_999.0), None),
        None,
        None,
    );
}

/// Waits until the server has freed what it frees in the background, so that `used_memory`
/// counts the records only.
async fn wait_for_lazy_free(conn: &mut MultiplexedConnection) {
    loop {
        let info: String = redis::cmd("INFO")
            .arg("memory")
            .query_async(conn)
            .await
            .unwrap();
        let pending = info
            .lines()
            .find_map(|line| line.strip_prefix("lazyfree_pending_objects:"))
            .map_or(0, |v| v.trim().parse::<u64>().unwrap_or(0));
        if pending == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn used_memory(conn: &mut MultiplexedConnection) -> i64 {
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(conn)
        .await
        .unwrap();
    info.lines()
        .find_map(|line| line.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("INFO memory reports used_memory")
}
