//! The command reaches every record a call can write, on Redis and PostgreSQL the tests start:
//! a single key, a tuple key `(tenant, id)`, a request of the HTTP layer with and without a
//! principal, a transactional call (PostgreSQL); a key that starts with `-`; a store key as a
//! log line shows it; the message when nothing is found; and the counts per scope of `stats`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::routing::post;
use http::{Request, StatusCode};
use idem::http::IdempotencyLayer;
use idem::{Call, RecordKey};
use serde_json::Value;
use sqlx::Executor;
use sqlx::postgres::{PgConnection, PgPool};
use tokio::sync::oneshot;
use tower::ServiceExt;

use super::{connect, idem, idem_json};

/// The prefix of these tests' records.
const PREFIX: &str = "ops";

/// How many times each body ran.
static SINGLE_RUNS: AtomicUsize = AtomicUsize::new(0);
static TUPLE_RUNS: AtomicUsize = AtomicUsize::new(0);
static TX_RUNS: AtomicUsize = AtomicUsize::new(0);

#[idem::idempotent(key = order, scope = "ops::single")]
async fn single(order: &str) -> u32 {
    SINGLE_RUNS.fetch_add(1, Ordering::SeqCst);
    7
}

#[idem::idempotent(key = (tenant, id), scope = "ops::tuple")]
async fn tuple(tenant: &str, id: u64) -> String {
    TUPLE_RUNS.fetch_add(1, Ordering::SeqCst);
    format!("{tenant}/{id}")
}

/// A transactional call: its record commits with the body's row.
#[idem::idempotent(key = (tenant, id), tx = conn, scope = "ops::tx")]
async fn book(conn: &mut PgConnection, tenant: &str, id: u32) -> u32 {
    TX_RUNS.fetch_add(1, Ordering::SeqCst);
    sqlx::query("INSERT INTO bookings (tenant, id) VALUES ($1, $2)")
        .bind(tenant)
        .bind(i64::from(id))
        .execute(&mut *conn)
        .await
        .unwrap();
    id
}

/// `idem --store URL --prefix ops args…`, which must succeed.
fn ops(url: &str, args: &[&str]) -> String {
    let mut all = vec!["--store", url, "--prefix", PREFIX];
    all.extend_from_slice(args);
    idem(&all)
}

/// `idem --json --store URL --prefix ops args…`, which must succeed.
fn ops_json(url: &str, args: &[&str]) -> Value {
    let mut all = vec!["--store", url, "--prefix", PREFIX];
    all.extend_from_slice(args);
    idem_json(&all)
}

/// Inspects, forgets and inspects again the record `args` name (after `inspect`/`forget`),
/// which must be completed under `store_key`.
fn find_and_forget(url: &str, args: &[&str], store_key: &str) {
    let with = |command: &'static str| [&[command][..], args].concat();
    let json = ops_json(url, &with("inspect"));
    assert_eq!(
        (&json["state"], &json["store_key"]),
        (&Value::from("completed"), &Value::from(store_key)),
        "{args:?}: {json}"
    );
    let text = ops(url, &with("inspect"));
    assert!(
        text.contains(&format!("key:          {store_key}"))
            && text.contains("state:        completed"),
        "{args:?}: {text}"
    );
    let json = ops_json(url, &with("forget"));
    assert_eq!(
        (&json["deleted"], &json["store_key"]),
        (&Value::from(true), &Value::from(store_key)),
        "{args:?}: {json}"
    );
    let json = ops_json(url, &with("inspect"));
    assert_eq!(json["state"], "absent", "{args:?}: {json}");
}

/// A request of the HTTP layer: its status, and whether it was replayed.
async fn send(app: &Router, key: &str, principal: Option<&str>) -> (StatusCode, bool) {
    let mut request = Request::post("/orders").header("idempotency-key", key);
    if let Some(principal) = principal {
        request = request.header("authorization", format!("Bearer {principal}"));
    }
    let response = app
        .clone()
        .oneshot(request.body(axum::body::Body::from("2 books")).unwrap())
        .await
        .unwrap();
    let replayed = response.headers().contains_key("idempotent-replayed");
    (response.status(), replayed)
}

/// An app with two routes behind the HTTP layer: `/orders` with a principal (the bearer
/// token) in the layer's default scope `http`, `/public/orders` without one in the scope
/// `public-api`; and how many times their handlers ran.
fn app() -> (Router, Router, Arc<AtomicUsize>) {
    let runs = Arc::new(AtomicUsize::new(0));
    let handler = {
        let runs = runs.clone();
        move || {
            let runs = runs.clone();
            async move {
                runs.fetch_add(1, Ordering::SeqCst);
                (StatusCode::CREATED, "created")
            }
        }
    };
    let private = Router::new().route("/orders", post(handler.clone())).layer(
        IdempotencyLayer::new().principal(|parts| {
            let value = parts.headers.get("authorization")?.to_str().ok()?;
            value.strip_prefix("Bearer ").map(str::to_owned)
        }),
    );
    let public = Router::new()
        .route("/orders", post(handler))
        .layer(IdempotencyLayer::new().scope("public-api"));
    (private, public, runs)
}

/// Every kind of record on the store at `url`, found, inspected and forgotten by the command;
/// after each forget, the call runs its body again.
async fn every_kind_of_record(url: &str) {
    let configured = connect(url, PREFIX).await;
    let key_of = |scope: &str, key: RecordKey| configured.store_key_of(scope, &key);
    let (private, public, http_runs) = app();
    configured
        .scope(async {
            assert_eq!(single("o-1").await.unwrap(), 7);
            assert_eq!(single("-42").await.unwrap(), 7);
            assert_eq!(single("--x").await.unwrap(), 7);
            assert_eq!(tuple("acme", 7).await.unwrap(), "acme/7");
            assert_eq!(
                send(&private, "k-1", Some("sk_alice")).await,
                (StatusCode::CREATED, false)
            );
            assert_eq!(
                send(&public, "k-2", None).await,
                (StatusCode::CREATED, false)
            );
            assert_eq!(
                send(&private, "k-1", Some("sk_alice")).await,
                (StatusCode::CREATED, true)
            );
        })
        .await;
    assert_eq!(http_runs.load(Ordering::SeqCst), 2);

    // A single key.
    let stored = key_of("ops::single", RecordKey::one("o-1"));
    assert_eq!(stored, "ops:ops.single:o-1");
    find_and_forget(url, &["ops::single", "o-1"], &stored);

    // Keys that start with `-`: a negative number as it is, any key after `--` or as --key=…
    let minus = key_of("ops::single", RecordKey::one("-42"));
    assert_eq!(minus, "ops:ops.single:-42");
    for args in [
        &["inspect", "ops::single", "-42"][..],
        &["inspect", "ops::single", "--key=-42"],
        &["inspect", "ops::single", "--key", "-42"],
    ] {
        let json = ops_json(url, args);
        assert_eq!(
            (&json["state"], &json["store_key"]),
            (&Value::from("completed"), &Value::from(minus.as_str())),
            "{args:?}: {json}"
        );
    }
    find_and_forget(url, &["ops::single", "--", "-42"], &minus);
    let dashed = key_of("ops::single", RecordKey::one("--x"));
    find_and_forget(url, &["ops::single", "--key=--x"], &dashed);

    // A tuple key: not the single key of its parts joined, which is looked up and not found.
    let text = ops(url, &["inspect", "ops::tuple", "acme:7"]);
    assert!(text.contains("state:        absent"), "{text}");
    assert!(
        text.contains(r"not found:    looked up ops:ops.tuple:acme\:7, the store key of the single key `acme:7`"),
        "{text}"
    );
    assert!(
        text.contains("--part TENANT --part ID") && text.contains("--store-key"),
        "{text}"
    );
    let json = ops_json(url, &["forget", "ops::tuple", "acme:7"]);
    assert_eq!(json["deleted"], false, "{json}");
    assert!(
        json["hint"]
            .as_str()
            .unwrap()
            .contains(r"looked up ops:ops.tuple:acme\:7"),
        "{json}"
    );
    let stored = key_of("ops::tuple", RecordKey::parts(["acme", "7"]));
    assert_eq!(stored, "ops:ops.tuple:acme:7");
    let json = ops_json(
        url,
        &["inspect", "ops::tuple", "--part", "acme", "--part", "7"],
    );
    assert_eq!(json["parts"], serde_json::json!(["acme", "7"]));
    find_and_forget(
        url,
        &["ops::tuple", "--part", "acme", "--part", "7"],
        &stored,
    );

    // A request of the HTTP layer with a principal: not found without it.
    let text = ops(url, &["inspect", "http", "k-1"]);
    assert!(
        text.contains("state:        absent") && text.contains("--principal P"),
        "{text}"
    );
    let stored = key_of("http", RecordKey::http(Some("sk_alice"), "k-1"));
    let json = ops_json(url, &["inspect", "http", "k-1", "--principal", "sk_alice"]);
    assert!(
        !json.to_string().contains("sk_alice"),
        "the principal is not printed: {json}"
    );
    find_and_forget(url, &["http", "k-1", "--principal", "sk_alice"], &stored);
    // And one without a principal.
    let stored = key_of("public-api", RecordKey::http(None, "k-2"));
    assert_eq!(stored, "ops:public-api:-:k-2");
    find_and_forget(url, &["public-api", "k-2", "--http"], &stored);

    // A store key as a log line shows it, without a scope.
    configured
        .scope(async { single("o-2").await.unwrap() })
        .await;
    let raw = key_of("ops::single", RecordKey::one("o-2"));
    find_and_forget(url, &["--store-key", &raw], &raw);
    let text = ops(url, &["forget", "--store-key", &raw]);
    assert!(
        text.contains(&format!("nothing to forget: no live record under {raw}"))
            && text.contains(&format!("looked up {raw}, the store key given")),
        "{text}"
    );

    // Forgotten: each call runs again.
    let before = (
        SINGLE_RUNS.load(Ordering::SeqCst),
        TUPLE_RUNS.load(Ordering::SeqCst),
    );
    configured
        .scope(async {
            single("o-1").await.unwrap();
            single("-42").await.unwrap();
            single("--x").await.unwrap();
            tuple("acme", 7).await.unwrap();
            assert_eq!(
                send(&private, "k-1", Some("sk_alice")).await,
                (StatusCode::CREATED, false)
            );
            assert_eq!(
                send(&public, "k-2", None).await,
                (StatusCode::CREATED, false)
            );
        })
        .await;
    let after = (
        SINGLE_RUNS.load(Ordering::SeqCst),
        TUPLE_RUNS.load(Ordering::SeqCst),
    );
    assert_eq!((after.0 - before.0, after.1 - before.1), (3, 1));
    assert_eq!(http_runs.load(Ordering::SeqCst), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_reaches_every_kind_of_record() {
    let server = super::RedisServer::start();
    every_kind_of_record(&server.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_reaches_every_kind_of_record_and_transactional_ones() {
    let server = super::PostgresServer::start();
    let url = server.url();
    every_kind_of_record(&url).await;

    // A transactional call: its record is in the table, committed with its row.
    let pool = PgPool::connect(&url).await.unwrap();
    pool.execute("CREATE TABLE bookings (tenant text NOT NULL, id int8 NOT NULL)")
        .await
        .unwrap();
    let configured = connect(&url, PREFIX).await;
    let booked = async || {
        let mut tx = pool.begin().await.unwrap();
        let id = configured.scope(book(&mut tx, "acme", 9)).await.unwrap();
        tx.commit().await.unwrap();
        id
    };
    assert_eq!(booked().await, 9);
    assert_eq!(booked().await, 9);
    assert_eq!(TX_RUNS.load(Ordering::SeqCst), 1);
    let stored = configured.store_key_of("ops::tx", &RecordKey::parts(["acme", "9"]));
    assert_eq!(stored, "ops:ops.tx:acme:9");
    find_and_forget(&url, &["ops::tx", "--part", "acme", "--part", "9"], &stored);
    assert_eq!(booked().await, 9);
    assert_eq!(
        TX_RUNS.load(Ordering::SeqCst),
        2,
        "forgotten: the call ran again"
    );
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM bookings")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows, 2);
}

/// A function whose module was renamed between two deploys: its records under two scopes, one
/// of them with a call in progress, and a long scope stored as its hash; `stats --by-scope`
/// counts each, within `--sample`.
async fn stats_by_scope_shows_a_rename(url: &str) {
    let renamed = connect(url, "renamed").await;
    let long = format!("app::{}", "x".repeat(220));
    for (scope, count) in [
        ("billing::invoice", 2),
        ("billing::invoices::invoice", 1),
        (long.as_str(), 1),
    ] {
        for n in 0..count {
            let scope = scope.to_owned();
            renamed
                .scope(Call::new(scope, n).run(async { 1_u8 }))
                .await
                .unwrap();
        }
    }
    let (finish, finished) = oneshot::channel::<()>();
    let running = tokio::spawn(
        renamed.scope(
            Call::new("billing::invoices::invoice", "running")
                .lease(Duration::from_secs(20))
                .run(async move {
                    let _ = finished.await;
                    2_u8
                }),
        ),
    );
    while renamed
        .scope(idem::inspect("billing::invoices::invoice", "running"))
        .await
        .unwrap()
        == idem::Inspection::Absent
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let json = idem_json(&["--store", url, "--prefix", "renamed", "stats", "--by-scope"]);
    assert_eq!(
        (&json["total"], &json["exact"]),
        (&Value::from(5), &Value::from(true)),
        "{json}"
    );
    let scopes = json["scopes"]
        .as_array()
        .unwrap_or_else(|| panic!("{json}"));
    let seen: Vec<(&str, Option<&str>, u64, u64)> = scopes
        .iter()
        .map(|s| {
            (
                s["scope"].as_str().unwrap(),
                s["name"].as_str(),
                s["in_progress"].as_u64().unwrap(),
                s["completed"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(seen.len(), 3, "{json}");
    assert_eq!(
        seen[1],
        ("billing.invoice", Some("billing::invoice"), 0, 2),
        "{json}"
    );
    assert_eq!(
        seen[2],
        (
            "billing.invoices.invoice",
            Some("billing::invoices::invoice"),
            1,
            1
        ),
        "{json}"
    );
    let (hashed, name, in_progress, completed) = seen[0];
    assert!(hashed.starts_with('#') && hashed.len() == 65, "{json}");
    assert_eq!((name, in_progress, completed), (None, 0, 1));

    let text = idem(&["--store", url, "--prefix", "renamed", "stats", "--by-scope"]);
    assert!(
        text.contains("scopes:       3 among the records counted"),
        "{text}"
    );
    assert!(
        text.contains("billing.invoices.invoice") && text.contains("billing::invoices::invoice"),
        "{text}"
    );
    let text = idem(&["--store", url, "--prefix", "renamed", "stats"]);
    assert!(!text.contains("scopes:"), "only with --by-scope: {text}");

    // Bounded by --sample, like the totals.
    let json = idem_json(&[
        "--store",
        url,
        "--prefix",
        "renamed",
        "stats",
        "--by-scope",
        "--sample",
        "3",
    ]);
    assert_eq!(
        (&json["total"], &json["exact"]),
        (&Value::from(3), &Value::from(false)),
        "{json}"
    );
    let counted: u64 = json["scopes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["total"].as_u64().unwrap())
        .sum();
    assert_eq!(counted, 3, "{json}");

    finish.send(()).unwrap();
    running.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stats_by_scope_shows_a_rename() {
    let server = super::RedisServer::start();
    stats_by_scope_shows_a_rename(&server.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_stats_by_scope_shows_a_rename() {
    let cluster = super::RedisCluster::start(3, 0);
    stats_by_scope_shows_a_rename(&cluster.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stats_by_scope_shows_a_rename() {
    let server = super::PostgresServer::start();
    stats_by_scope_shows_a_rename(&server.url()).await;
}
