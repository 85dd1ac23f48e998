//! The floors: what idem's own Redis commands cost when sent by hand on one multiplexed
//! connection, with no store around them. The distance between a row here and the same row
//! for idem is the cost of `RedisStore` and the engine, not of the protocol.

use std::sync::Arc;

use redis::aio::MultiplexedConnection;

use crate::measure::{Plan, latency_pair, throughput_pair};
use crate::on_redis::CALLERS;
use crate::report::{Quantity, Report};
use crate::workload::store_key;

#[path = "by_hand.rs"]
mod by_hand;

use by_hand::{first, get, replay};

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
