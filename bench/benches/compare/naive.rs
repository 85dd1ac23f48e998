//! The pattern many services write by hand on Redis: look for the result, take a lock, look
//! again, run, store the result, drop the lock. Five round trips for a first call, one for a
//! replay; the result is stored as JSON, like idem's.

use redis::aio::MultiplexedConnection;

use crate::workload::{Receipt, TTL, receipt};

/// One call of the function with the hand-written pattern.
pub async fn charge(conn: &mut MultiplexedConnection, order: u64) -> Receipt {
    let key = format!("naive:{order}");
    if let Some(stored) = get(conn, &key).await {
        return decode(&stored);
    }
    let lock = format!("{key}:lock");
    let token = order.to_string();
    let locked: Option<String> = redis::cmd("SET")
        .arg(&lock)
        .arg(&token)
        .arg("NX")
        .arg("PX")
        .arg(30_000)
        .query_async(conn)
        .await
        .expect("SET NX");
    assert!(
        locked.is_some(),
        "every first call of the benchmark has its own key"
    );
    if let Some(stored) = get(conn, &key).await {
        let _: i64 = redis::cmd("DEL")
            .arg(&lock)
            .query_async(conn)
            .await
            .unwrap();
        return decode(&stored);
    }
    let value = receipt(order);
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg(serde_json::to_vec(&value).unwrap())
        .arg("PX")
        .arg(TTL.as_millis() as u64)
        .query_async(conn)
        .await
        .expect("SET result");
    let _: i64 = redis::cmd("DEL")
        .arg(&lock)
        .query_async(conn)
        .await
        .unwrap();
    value
}

async fn get(conn: &mut MultiplexedConnection, key: &str) -> Option<Vec<u8>> {
    redis::cmd("GET")
        .arg(key)
        .query_async(conn)
        .await
        .expect("GET")
}

fn decode(bytes: &[u8]) -> Receipt {
    serde_json::from_slice(bytes).expect("a stored receipt")
}
