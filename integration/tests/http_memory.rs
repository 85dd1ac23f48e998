//! The `Idempotency-Key` layer on the memory store: the whole HTTP suite, and what the layer
//! does when its store is down.

mod support;

use http::StatusCode;
use idem::testing::{DownStore, Forwarding, Op};
use idem::{Config, FailMode, Idem, MemoryStore, StoreErrorKind, StoreHandle};
use std::sync::Arc;
use std::time::Duration;
use support::http::{App, layer, second_while_first_runs};

http_suite!(async { (MemoryStore::new(), ()) });

/// The store down, fail-closed (the default): 503, and the handler does not run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_down_is_503_when_failing_closed() {
    let app = App::serve(layer(&StoreHandle::new(DownStore))).await;
    let reply = app
        .post("/orders")
        .key("k-down")
        .auth("alice")
        .body("x")
        .send()
        .await;
    let detail = reply.assert_problem(503, "store-unavailable");
    assert!(detail.contains("unavailable"), "{detail}");
    assert_eq!(app.runs(), 0);
}

/// The store down, fail-open by configuration: the handler runs, unprotected, on every retry.
/// The layer takes its store and fail mode from the `Idem` the request runs under.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_down_runs_unprotected_when_failing_open() {
    let open = Idem::with_settings(DownStore, &Config::default().fail_mode(FailMode::Open));
    let layer = idem::http::IdempotencyLayer::new()
        .required(true)
        .principal(support::http::bearer);
    let app = App::serve_router(move |router| {
        router.layer(layer).layer(axum::middleware::from_fn(
            move |request: axum::extract::Request, next: axum::middleware::Next| {
                let open = open.clone();
                async move { open.scope(next.run(request)).await }
            },
        ))
    })
    .await;
    for run in 1..=2 {
        let reply = app
            .post("/orders")
            .key("k-open")
            .auth("alice")
            .body("x")
            .send()
            .await;
        assert_eq!(reply.status, StatusCode::CREATED);
        assert!(!reply.replayed());
        assert_eq!(app.runs(), run);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_the_lease_when_the_store_cannot_inspect() {
    // A store that cannot inspect its records: the 409's `Retry-After` is the lease, rounded up.
    let opaque = Forwarding::new(MemoryStore::new()).fail(Op::Inspect, StoreErrorKind::Other);
    let store = StoreHandle::new(opaque);
    let layer = layer(&store)
        .lease(Duration::from_millis(1_500))
        .reject_in_flight();
    let app = Arc::new(App::serve(layer).await);
    let (first, second) = second_while_first_runs(&app, "k-opaque").await;
    second.assert_problem(409, "in-progress");
    assert_eq!(second.headers[http::header::RETRY_AFTER], "2");
    app.open();
    let first = idem::testing::within("the first request", first).await;
    assert_eq!(first.unwrap().status, StatusCode::CREATED);
}

#[test]
#[should_panic(
    expected = "IdempotencyLayer::ttl: invalid idem configuration: `ttl` must be at least 1ms"
)]
fn a_layer_with_a_ttl_below_the_minimum_is_refused_when_built() {
    let _ = idem::http::IdempotencyLayer::new().ttl(std::time::Duration::ZERO);
}

#[test]
#[should_panic(
    expected = "IdempotencyLayer::lease: invalid idem configuration: `lease` must be at least 3ms"
)]
fn a_layer_with_a_lease_below_the_minimum_is_refused_when_built() {
    let _ = idem::http::IdempotencyLayer::new().lease(std::time::Duration::from_millis(2));
}
