//! The floors: what idem's own Redis commands cost when sent by hand on one multiplexed
//! connection, with no store around them. The distance between a row here and the same row
//! for idem is the cost of `RedisStore` and the engine, not of the protocol.

use std::hint::black_box;
use std::sync::{Arc, LazyLock};

use redis::Script;
use redis::aio::MultiplexedConnection;

use crate::measure::{Plan, latency_pair, throughput_pair};
use crate::on_redis::CALLERS;
use crate::report::{Quantity, Report};
use crate::workload::{TTL, fresh, store_key};

/// The completion idem sends: compare with the claim, store the result, wake the waiters.
static COMPLETE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  redis.call('PUBLISH', KEYS[1], 'complete')
  return 1
end
return 0
",
    )
});

/// A claim's bytes, as long as idem's (`claim:1:<token>:-`).
const CLAIM: &str = "claim:1:0123456789abcdef0123456789abcdef:-";

async fn claim(conn: &mut MultiplexedConnection, key: &str) -> Option<Vec<u8>> {
    redis::cmd("SET")
        .arg(key)
        .arg(CLAIM)
        .arg("NX")
        .arg("PX")
        .arg(30_000)
        .arg("GET")
        .query_async(conn)
        .await
        .expect("SET NX PX GET")
}

/// idem's replay by hand: one `SET NX PX GET` that finds the record.
async fn replay(conn: &mut MultiplexedConnection) {
    let found = claim(conn, &store_key(7)).await;
    assert!(black_box(found).is_some(), "the record is stored");
}

/// idem's first call by hand: `SET NX PX GET`, then the completion script.
async fn first(conn: &mut MultiplexedConnection, payload: &[u8]) {
    let key = format!("floor:{}", fresh());
    assert!(claim(conn, &key).await.is_none(), "a new key");
    let held: i64 = COMPLETE
        .key(&key)
        .arg(CLAIM)
        .arg(payload)
        .arg(TTL.as_millis() as u64)
        .invoke_async(conn)
        .await
        .expect("EVALSHA complete");
    assert_eq!(held, 1);
}

async fn get(conn: &mut MultiplexedConnection) {
    let value: Option<Vec<u8>> = redis::cmd("GET")
        .arg(store_key(7))
        .query_async(conn)
        .await
        .expect("GET");
    assert!(black_box(value).is_some());
}

pub async fn rows(report: &mut Report, plan: &Plan, conn: &MultiplexedConnection) {
    report.section("Floor: idem's own commands sent by hand on one multiplexed connection");
    let payload: Vec<u8> = redis::cmd("GET")
        .arg(store_key(7))
        .query_async(&mut conn.clone())
        .await
        .expect("the record idem stored");
    let (mut a, mut b) = (conn.clone(), conn.clone());
    let (base, hand) = latency_pair(
        plan,
        async || get(&mut a).await,
        async || replay(&mut b).await,
    )
    .await;
    report.add_pair(
        "replay: SET NX PX GET",
        "raw GET",
        (base, hand),
        Quantity::Nanos,
        None,
    );
    let (mut a, mut b) = (conn.clone(), conn.clone());
    let (base, hand) = latency_pair(
        plan,
        async || get(&mut a).await,
        async || first(&mut b, &payload).await,
    )
    .await;
    report.add_pair(
        "first call: SET NX PX GET + EVALSHA",
        "raw GET",
        (base, hand),
        Quantity::Nanos,
        None,
    );

    let gets = {
        let conn = conn.clone();
        move || {
            let mut conn = conn.clone();
            async move { get(&mut conn).await }
        }
    };
    let replays = {
        let conn = conn.clone();
        move || {
            let mut conn = conn.clone();
            async move { replay(&mut conn).await }
        }
    };
    let payload = Arc::new(payload);
    let firsts = {
        let conn = conn.clone();
        move || {
            let (mut conn, payload) = (conn.clone(), payload.clone());
            async move { first(&mut conn, &payload).await }
        }
    };
    let pair = throughput_pair(plan, CALLERS, gets.clone(), replays).await;
    report.add_pair(
        "64 callers: replays/s",
        "raw GETs/s",
        pair,
        Quantity::PerSecond,
        None,
    );
    let pair = throughput_pair(plan, CALLERS, gets, firsts).await;
    report.add_pair(
        "64 callers: first calls/s",
        "raw GETs/s",
        pair,
        Quantity::PerSecond,
        None,
    );
}
