//! idem's own Redis commands, sent by hand on one multiplexed connection: what a replay and a
//! first call cost the protocol, with no store around them. Shared by the floor rows and the
//! instruction counts.

use std::hint::black_box;
use std::sync::LazyLock;

use redis::Script;
use redis::aio::MultiplexedConnection;

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

/// `SET NX PX GET` of idem's claim: the record `key` holds, if any.
pub async fn claim(conn: &mut MultiplexedConnection, key: &str) -> Option<Vec<u8>> {
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
pub async fn replay(conn: &mut MultiplexedConnection) {
    let found = claim(conn, &store_key(7)).await;
    assert!(black_box(found).is_some(), "the record is stored");
}

/// idem's first call by hand: `SET NX PX GET`, then the completion script.
pub async fn first(conn: &mut MultiplexedConnection, payload: &[u8]) {
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

/// A raw `GET` of the record idem stored for order 7: the baseline of the Redis rows.
pub async fn get(conn: &mut MultiplexedConnection) {
    let value: Option<Vec<u8>> = redis::cmd("GET")
        .arg(store_key(7))
        .query_async(conn)
        .await
        .expect("GET");
    assert!(black_box(value).is_some());
}
