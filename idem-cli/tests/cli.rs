//! The `idem` command on real servers the tests start (Redis, a Redis Cluster of three
//! masters, PostgreSQL, each on free loopback ports): records are made by real calls through
//! the library, then looked at, forgotten and counted by the binary, whose answers are checked
//! against the library's own; and its usage errors and exit statuses.

mod support;

#[path = "cli/records.rs"]
mod records;

use std::process::Command;
use std::time::Duration;

use idem::{Call, Config, Idem, Inspection, Status, tokens};
use serde_json::Value;
use support::cluster::RedisCluster;
use support::postgres::PostgresServer;
use support::redis::{RedisServer, free_port};
use tokio::sync::oneshot;

const SCOPE: &str = "billing::invoice";

/// What a run of the binary did.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `idem args…` with no `IDEM_*` variable of this process, plus `vars`.
fn idem_with(args: &[&str], vars: &[(&str, &str)]) -> Run {
    let mut command = Command::new(env!("CARGO_BIN_EXE_idem"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("IDEM_") {
            command.env_remove(name);
        }
    }
    command.args(args).envs(vars.iter().copied());
    let output = command.output().expect("run the idem binary");
    Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Runs `idem args…`, which must succeed, and returns its output.
fn idem(args: &[&str]) -> String {
    let run = idem_with(args, &[]);
    assert_eq!(run.code, Some(0), "idem {args:?} failed: {run:?}");
    assert!(run.stderr.is_empty(), "idem {args:?} wrote: {}", run.stderr);
    run.stdout
}

/// Runs `idem --json args…`, which must succeed, and parses its output.
fn idem_json(args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = idem(&all);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("idem {all:?} printed {out:?}: {e}"))
}

fn ms(value: &Value) -> u64 {
    value
        .as_u64()
        .unwrap_or_else(|| panic!("{value} is not milliseconds"))
}

/// An idem on `url` with `prefix`, as an application configures it.
async fn connect(url: &str, prefix: &str) -> Idem {
    Idem::connect(&Config::default().store(url).prefix(prefix))
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"))
}

/// Three completed calls (one key with a `:`, which the library escapes) and one call left
/// running under the prefix `shop`, and one completed call under the default prefix `idem`;
/// then every command on them, compared with what the library itself reports.
async fn inspect_forget_and_stats(url: &str) {
    let shop = connect(url, "shop").await;
    let plain = connect(url, "idem").await;
    for order in ["order-1", "order-2", "a:b"] {
        let done = shop
            .scope(
                Call::new(SCOPE, order)
                    .ttl(Duration::from_secs(3600))
                    .run(async { format!("receipt of {order}") }),
            )
            .await
            .unwrap();
        assert_eq!(done.status, Status::Executed);
    }
    plain
        .scope(Call::new(SCOPE, "order-1").run(async { 1_u32 }))
        .await
        .unwrap();
    let (finish, finished) = oneshot::channel::<()>();
    let running = tokio::spawn(
        shop.scope(
            Call::new(SCOPE, "order-9")
                .lease(Duration::from_secs(20))
                .fingerprint("the request of order 9")
                .run(async move {
                    let _ = finished.await;
                    9_u32
                }),
        ),
    );
    let claimed = loop {
        match shop.scope(idem::inspect(SCOPE, "order-9")).await.unwrap() {
            Inspection::Absent => tokio::time::sleep(Duration::from_millis(5)).await,
            claimed => break claimed,
        }
    };
    let Inspection::InProgress {
        fingerprint: Some(running_fp),
        ..
    } = claimed
    else {
        panic!("the running call's record: {claimed:?}");
    };
    let shop_args = |rest: &[&'static str]| -> Vec<String> {
        let mut args = vec![
            "--store".to_owned(),
            url.to_owned(),
            "--prefix".into(),
            "shop".into(),
        ];
        args.extend(rest.iter().map(|arg| arg.to_string()));
        args
    };
    let run = |args: Vec<String>| idem(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let run_json =
        |args: Vec<String>| idem_json(&args.iter().map(String::as_str).collect::<Vec<_>>());

    // A completed record, as text and as JSON: the key as the library stores it.
    let text = run(shop_args(&["inspect", SCOPE, "order-1"]));
    assert!(
        text.contains("key:          shop:billing.invoice:order-1"),
        "{text}"
    );
    assert!(text.contains("state:        completed"), "{text}");
    assert!(
        text.contains("ttl left:") && text.contains(" bytes"),
        "{text}"
    );
    let json = run_json(shop_args(&["inspect", SCOPE, "a:b"]));
    assert_eq!(json["store_key"], shop.store_key(SCOPE, "a:b"));
    assert_eq!(json["store_key"], r"shop:billing.invoice:a\:b");
    assert_eq!(
        (&json["scope"], &json["key"]),
        (&Value::from(SCOPE), &Value::from("a:b"))
    );
    assert_eq!(json["state"], "completed");
    let Inspection::Completed { size, .. } = shop.scope(idem::inspect(SCOPE, "a:b")).await.unwrap()
    else {
        panic!("a:b is completed");
    };
    assert_eq!(json["size"], size);
    assert!(size > 0);
    let ttl = ms(&json["ttl_left_ms"]);
    assert!((3_500_000..=3_600_000).contains(&ttl), "{json}");
    assert_eq!(json["fingerprint"], Value::Null);

    // The running call: in progress, with its lease and its request's fingerprint.
    let text = run(shop_args(&["inspect", SCOPE, "order-9"]));
    assert!(text.contains("state:        in progress"), "{text}");
    assert!(
        text.contains("lease left:") && text.contains(&running_fp.to_hex()),
        "{text}"
    );
    let json = run_json(shop_args(&["inspect", SCOPE, "order-9"]));
    assert_eq!(json["state"], "in_progress");
    let lease = ms(&json["lease_left_ms"]);
    assert!(lease > 0 && lease <= 20_000, "{json}");
    assert_eq!(json["fingerprint"], running_fp.to_hex());

    // The prefix is the application's: without `--prefix shop`, `idem`'s records.
    let json = idem_json(&["--store", url, "inspect", SCOPE, "order-9"]);
    assert_eq!(
        (&json["state"], &json["store_key"]),
        (
            &Value::from("absent"),
            &Value::from("idem:billing.invoice:order-9")
        )
    );
    let json = idem_json(&["--store", url, "inspect", SCOPE, "order-1"]);
    assert_eq!(json["state"], "completed");

    // Two server-issued tokens under the prefix `shop`, one of them redeemed: counted apart.
    let ttl = Duration::from_secs(600);
    let token = shop.scope(tokens::issue("forms", ttl)).await.unwrap();
    shop.scope(tokens::issue_bounded("forms", ttl, 5))
        .await
        .unwrap();
    let redeemed = shop.scope(tokens::redeem("forms", &token)).await.unwrap();
    assert_eq!(redeemed, idem::store::Redemption::Valid);

    // Counted by state, exactly (a small store), under each prefix alone.
    let json = run_json(shop_args(&["stats"]));
    assert_eq!(
        (&json["tokens"], &json["redeemed_tokens"]),
        (&Value::from(1), &Value::from(1)),
        "{json}"
    );
    assert_eq!(
        (
            &json["in_progress"],
            &json["completed"],
            &json["total"],
            &json["exact"]
        ),
        (
            &Value::from(1),
            &Value::from(3),
            &Value::from(4),
            &Value::from(true)
        ),
        "{json}"
    );
    assert_eq!(
        (&json["prefix"], &json["key_prefix"]),
        (&Value::from("shop"), &Value::from("shop:"))
    );
    let json = idem_json(&["--store", url, "stats"]);
    assert_eq!(
        (&json["total"], &json["completed"], &json["exact"]),
        (&Value::from(1), &Value::from(1), &Value::from(true)),
        "{json}"
    );
    let text = run(shop_args(&["stats"]));
    for line in [
        "in progress:  1",
        "completed:    3",
        "total:        4",
        "counted:      exact",
        "tokens:       1 live, not redeemed; 1 redeemed",
    ] {
        assert!(text.contains(line), "{line:?} in {text}");
    }

    // Forgotten: deleted once, then nothing to forget, absent, and the call runs again.
    let json = run_json(shop_args(&["forget", SCOPE, "order-1"]));
    assert_eq!(
        (&json["deleted"], &json["store_key"]),
        (
            &Value::from(true),
            &Value::from("shop:billing.invoice:order-1")
        )
    );
    let text = run(shop_args(&["forget", SCOPE, "order-1"]));
    assert!(text.contains("nothing to forget"), "{text}");
    let json = run_json(shop_args(&["inspect", SCOPE, "order-1"]));
    assert_eq!(json["state"], "absent");
    assert_eq!(
        shop.scope(idem::inspect(SCOPE, "order-1")).await.unwrap(),
        Inspection::Absent
    );
    let again = shop
        .scope(Call::new(SCOPE, "order-1").run(async { "a second receipt".to_owned() }))
        .await
        .unwrap();
    assert_eq!(
        (again.status, again.value.as_str()),
        (Status::Executed, "a second receipt")
    );
    let text = run(shop_args(&["forget", SCOPE, "a:b"]));
    assert!(text.contains(r"forgot shop:billing.invoice:a\:b"), "{text}");

    // The running call completes: counted as completed.
    finish.send(()).unwrap();
    let done = running.await.unwrap().unwrap();
    assert_eq!((done.status, done.value), (Status::Executed, 9));
    let json = run_json(shop_args(&["stats"]));
    assert_eq!(
        (&json["in_progress"], &json["completed"], &json["exact"]),
        (&Value::from(0), &Value::from(3), &Value::from(true)),
        "{json}"
    );
}

/// `count` completed records under the prefix `idem`.
async fn fill(url: &str, count: usize) {
    let idem = connect(url, "idem").await;
    for n in 0..count {
        idem.scope(Call::new("fill::scope", format!("key-{n}")).run(async move { n }))
            .await
            .unwrap();
    }
}

/// Stats of `count` records: exact with the default sample and with `--sample <count>`, a
/// sample of 10 with `--sample 10`.
fn check_sampled_stats(url: &str, count: u64) {
    let json = idem_json(&["--store", url, "stats"]);
    assert_eq!(
        (&json["completed"], &json["exact"]),
        (&Value::from(count), &Value::from(true)),
        "{json}"
    );
    let all = count.to_string();
    let json = idem_json(&["--store", url, "stats", "--sample", &all]);
    assert_eq!(
        (&json["total"], &json["exact"]),
        (&Value::from(count), &Value::from(true)),
        "a sample as large as the records counts them all: {json}"
    );
    let json = idem_json(&["--store", url, "stats", "--sample", "10"]);
    assert_eq!(
        (&json["total"], &json["exact"], &json["sample"]),
        (&Value::from(10), &Value::from(false), &Value::from(10)),
        "{json}"
    );
    let text = idem(&["--store", url, "stats", "--sample", "10"]);
    assert!(
        text.contains(
            "counted:      a sample: the first 10 records found (--sample 10); there are more"
        ),
        "{text}"
    );
}

/// Prefixes that are glob patterns, or start one another, each with records of their own:
/// `stats` counts each prefix's records alone.
async fn prefixes_count_only_their_own(url: &str) {
    let prefixes = [("a*", 1), ("ab", 2), ("a", 3), (r"a\", 4), ("a?", 5)];
    for (prefix, count) in prefixes {
        let idem = connect(url, prefix).await;
        for n in 0..count {
            idem.scope(Call::new("s", n).run(async { 0_u8 }))
                .await
                .unwrap();
        }
    }
    for (prefix, count) in prefixes {
        let json = idem_json(&["--store", url, "--prefix", prefix, "stats"]);
        assert_eq!(
            (&json["total"], &json["exact"]),
            (&Value::from(count), &Value::from(true)),
            "prefix {prefix}: {json}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stats_counts_each_prefix_alone() {
    let server = RedisServer::start();
    prefixes_count_only_their_own(&server.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stats_counts_each_prefix_alone() {
    let server = PostgresServer::start();
    prefixes_count_only_their_own(&server.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_inspect_forget_and_stats() {
    let server = RedisServer::start();
    inspect_forget_and_stats(&server.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stats_samples_with_scan_never_keys() {
    let server = RedisServer::start();
    fill(&server.url(), 30).await;
    let _: () = server.cmd(&["CONFIG", "RESETSTAT"]);
    check_sampled_stats(&server.url(), 30);
    let json = idem_json(&["--store", &server.url(), "stats"]);
    assert_eq!(json["store_keys"], 30, "DBSIZE: {json}");
    let stats: String = server.cmd(&["INFO", "commandstats"]);
    assert!(stats.contains("cmdstat_scan:"), "{stats}");
    assert!(!stats.contains("cmdstat_keys:"), "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stats_walks_many_scan_pages() {
    let server = RedisServer::start();
    fill(&server.url(), 2_500).await;
    let _: () = server.cmd(&["SET", "not-idem", "x"]);
    let json = idem_json(&["--store", &server.url(), "stats"]);
    assert_eq!(
        (&json["completed"], &json["exact"], &json["store_keys"]),
        (&Value::from(2_500), &Value::from(true), &Value::from(2_501)),
        "{json}"
    );
    let json = idem_json(&["--store", &server.url(), "stats", "--sample", "1500"]);
    assert_eq!(
        (&json["total"], &json["exact"]),
        (&Value::from(1_500), &Value::from(false)),
        "{json}"
    );
    let stats: String = server.cmd(&["INFO", "commandstats"]);
    let scans = stats
        .lines()
        .find_map(|line| line.strip_prefix("cmdstat_scan:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|calls| calls.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("SCAN was counted: {stats}"));
    assert!(
        scans >= 4,
        "pages of at most about 1000 keys: {scans} SCANs"
    );
    assert!(!stats.contains("cmdstat_keys:"), "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_inspect_forget_and_stats() {
    let cluster = RedisCluster::start(3, 0);
    inspect_forget_and_stats(&cluster.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_stats_scans_every_master_never_keys() {
    let cluster = RedisCluster::start(3, 0);
    fill(&cluster.url(), 30).await;
    for master in cluster.masters() {
        assert!(
            master.dbsize() > 0,
            "the records are spread over the masters"
        );
        let _: () = master.cmd(&["CONFIG", "RESETSTAT"]);
    }
    check_sampled_stats(&cluster.url(), 30);
    let json = idem_json(&["--store", &cluster.url(), "stats"]);
    assert_eq!(json["store_keys"], 30, "DBSIZE of every master: {json}");
    for master in cluster.masters() {
        let stats = master.command_stats();
        assert!(stats.contains_key("scan"), "{} {stats:?}", master.port());
        assert!(!stats.contains_key("keys"), "{} {stats:?}", master.port());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_inspect_forget_and_stats() {
    let server = PostgresServer::start();
    inspect_forget_and_stats(&server.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_inspect_forget_and_stats() {
    let dir = std::env::temp_dir().join(format!(
        "idem-cli-sqlite-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos())
    ));
    std::fs::create_dir_all(&dir).expect("a temp directory");
    let url = format!("sqlite://{}", dir.join("idem.db").display());
    inspect_forget_and_stats(&url).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stats_samples() {
    let server = PostgresServer::start();
    fill(&server.url(), 30).await;
    check_sampled_stats(&server.url(), 30);
    server.psql("ANALYZE idem_records");
    let json = idem_json(&["--store", &server.url(), "stats"]);
    assert_eq!(
        json["store_keys"], 30,
        "pg_class.reltuples after ANALYZE: {json}"
    );
}

#[test]
fn postgres_without_the_table_says_how_to_create_it() {
    let server = PostgresServer::start();
    let run = idem_with(&["--store", &server.url(), "stats"], &[]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(
        run.stderr.contains("does not exist") && run.stderr.contains("CREATE TABLE"),
        "{run:?}"
    );
    let table = server.psql("SELECT to_regclass('idem_records') IS NULL");
    assert_eq!(table, "t", "no table was created");
}

#[test]
fn usage_without_a_store_exits_2() {
    let run = idem_with(&["inspect", SCOPE, "k"], &[]);
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(
        run.stderr
            .contains("no store given: pass --store URL or set IDEM_STORE"),
        "{run:?}"
    );
    assert!(run.stdout.is_empty());
}

#[test]
fn usage_with_an_unknown_scheme_exits_2() {
    let run = idem_with(&["--store", "mongodb://127.0.0.1:1/db", "stats"], &[]);
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(
        run.stderr
            .contains("store=`mongodb://127.0.0.1:1/db` is not valid; expected"),
        "{run:?}"
    );
    let run = idem_with(&["forget", SCOPE, "k"], &[("IDEM_STORE", "mongodb://h/db")]);
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(
        run.stderr
            .contains("IDEM_STORE=`mongodb://h/db` is not valid"),
        "{run:?}"
    );
    let run = idem_with(&["--store", "memory", "stats"], &[]);
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(
        run.stderr
            .contains("the memory store lives inside one process"),
        "{run:?}"
    );
}

#[test]
fn usage_errors_of_the_arguments_exit_2() {
    for args in [
        &["inspect", SCOPE][..],
        &["inspect", SCOPE, "-x42"],
        &["inspect", SCOPE, "k", "--part", "a"],
        &["forget", "--store-key", "idem:s:k", SCOPE],
        &["forget", SCOPE, "k", "--http", "--principal", "p"],
        &["stats", "--sample", "0"],
        &["frobnicate"],
    ] {
        let run = idem_with(args, &[("IDEM_STORE", "redis://127.0.0.1:1/0")]);
        assert_eq!(run.code, Some(2), "{args:?}: {run:?}");
        assert!(
            run.stderr.contains("Usage:") || run.stderr.contains("error:"),
            "{run:?}"
        );
    }
    let run = idem_with(&["--help"], &[]);
    assert_eq!(run.code, Some(0), "{run:?}");
    for word in [
        "inspect",
        "forget",
        "stats",
        "--store",
        "--prefix",
        "--json",
        "--part",
        "--principal",
        "--store-key",
        "--by-scope",
    ] {
        assert!(run.stdout.contains(word), "{word} in {}", run.stdout);
    }
    let run = idem_with(&["inspect", SCOPE, "-x42"], &[]);
    assert!(run.stderr.contains("-- -x"), "clap says how: {run:?}");
    for command in ["inspect", "forget"] {
        let run = idem_with(&[command, "--help"], &[]);
        assert_eq!(run.code, Some(0), "{run:?}");
        for word in [
            "--part",
            "--principal",
            "--http",
            "--store-key",
            "--key",
            "-x42",
        ] {
            assert!(run.stdout.contains(word), "{word} in {}", run.stdout);
        }
    }
}

#[test]
fn a_store_that_does_not_answer_exits_1() {
    let url = format!("redis://127.0.0.1:{}/0", free_port());
    let run = idem_with(
        &["--store", &url, "stats"],
        &[("IDEM_CONNECT_TIMEOUT", "2s")],
    );
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(
        run.stderr
            .contains("cannot connect to the idempotency store"),
        "{run:?}"
    );
}

/// An attempt under `abandoned = "fail"` dropped mid-body: `inspect` shows it abandoned,
/// `complete` stores the operator's value, which the next call replays; `complete` again is
/// refused while the key holds a result. On a SQLite file (no server).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_attempt_is_inspected_and_completed_by_hand() {
    let dir = std::env::temp_dir().join(format!("idem-cli-abandoned-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a temp directory");
    let url = format!("sqlite://{}", dir.join("idem.db").display());
    let app = connect(&url, "idem").await;
    let (reached, is_reached) = oneshot::channel();
    let first = tokio::spawn(
        app.scope(
            Call::new("payouts::send", "po-7")
                .abandoned(idem::Abandoned::Fail)
                .run(async move {
                    let _ = reached.send(());
                    std::future::pending::<u64>().await
                }),
        ),
    );
    tokio::time::timeout(Duration::from_secs(10), is_reached)
        .await
        .expect("the body starts in time")
        .expect("the body starts");
    first.abort();
    let _ = first.await;
    let call = || {
        app.scope(
            Call::new("payouts::send", "po-7")
                .abandoned(idem::Abandoned::Fail)
                .wait(Duration::from_secs(5))
                .run(async { 1_u64 }),
        )
    };
    assert!(matches!(
        call().await,
        Err(idem::Error::Abandoned { attempt: 1, .. })
    ));
    let shown = idem_json(&["--store", &url, "inspect", "payouts::send", "po-7"]);
    assert_eq!(shown["state"], "abandoned", "{shown}");
    assert_eq!(shown["attempt"], 1, "{shown}");
    assert_eq!(shown["steps_completed"], 0, "{shown}");
    let text = idem(&["--store", &url, "inspect", "payouts::send", "po-7"]);
    assert!(
        text.contains("abandoned") && text.contains("attempt:"),
        "{text}"
    );
    let done = idem(&[
        "--store",
        &url,
        "complete",
        "payouts::send",
        "po-7",
        "--value",
        "42",
        "--ttl",
        "1h",
    ]);
    assert!(
        done.starts_with("completed idem:payouts.send:po-7"),
        "{done}"
    );
    let replay = call().await.expect("the next call replays");
    assert_eq!((replay.value, replay.status), (42, Status::Replayed));
    let again = idem_with(
        &[
            "--store",
            &url,
            "complete",
            "payouts::send",
            "po-7",
            "--value",
            "7",
        ],
        &[],
    );
    assert_eq!(again.code, Some(1), "{again:?}");
    assert!(again.stderr.contains("holds a result already"), "{again:?}");
    let bad = idem_with(
        &[
            "--store",
            &url,
            "complete",
            "payouts::send",
            "po-8",
            "--value",
            "{",
        ],
        &[],
    );
    assert_eq!(bad.code, Some(2), "{bad:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
