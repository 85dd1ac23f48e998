//! idem's `PostgresStore` through PgBouncer: the system's `pgbouncer` with a configuration of
//! the benchmark's own on a free loopback port, in transaction mode (what fails, exactly) and
//! in session mode (the control), with the same per-call rows where the calls work.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use idem::{Call, PostgresOptions, PostgresStore};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::pg_capacity::{
    CALLERS, COST_HEADER, SCOPE, TTL, cost_row, drive, first_call, key, phase, result_of, warmup,
};
use crate::pg_probe::{CapacityServer, Probe};

/// A running pgbouncer of the benchmark's own; killed when dropped.
struct Bouncer {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Drop for Bouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Bouncer {
    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pgbouncer.log")).unwrap_or_default()
    }

    /// CPU seconds of the pgbouncer process so far.
    fn cpu(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))
            .unwrap_or_default();
        let Some(close) = stat.rfind(')') else {
            return 0.0;
        };
        let fields: Vec<u64> = stat[close + 2..]
            .split_whitespace()
            .map(|f| f.parse().unwrap_or(0))
            .collect();
        fields.get(11).zip(fields.get(12)).map_or(0.0, |(u, s)| (u + s) as f64 / 100.0)
    }
}

fn binary() -> Option<PathBuf> {
    ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

fn free_port() -> u16 {
    const STANDARD: &[u16] = &[5432, 5433, 5434, 5435, 6432];
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        if !STANDARD.contains(&port) {
            return port;
        }
    }
}

fn root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

/// Starts pgbouncer in `mode` in front of `server`, with `extra` lines in its section.
fn start(bin: &Path, server: &CapacityServer, mode: &str, extra: &str, n: usize) -> Bouncer {
    let dir = std::env::temp_dir().join(format!("idem-pgbouncer-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("pgbouncer's directory");
    let port = free_port();
    std::fs::write(dir.join("userlist.txt"), "\"postgres\" \"\"\n").unwrap();
    std::fs::write(
        dir.join("pgbouncer.ini"),
        format!(
            "[databases]\npostgres = host=127.0.0.1 port={pg} dbname=postgres user=postgres\n\n\
             [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
             auth_type = trust\nauth_file = {dir}/userlist.txt\npool_mode = {mode}\n\
             max_client_conn = 400\ndefault_pool_size = 20\nlogfile = {dir}/pgbouncer.log\n\
             pidfile = {dir}/pgbouncer.pid\n{extra}\n",
            pg = server.port(),
            dir = dir.display(),
        ),
    )
    .unwrap();
    let mut command = Command::new(bin);
    if root() {
        let _ = Command::new("chown").args(["-R", "postgres:"]).arg(&dir).status();
        command.args(["-u", "postgres"]);
    }
    let child = command
        .arg(dir.join("pgbouncer.ini"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run pgbouncer");
    let bouncer = Bouncer { child, port, dir };
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "pgbouncer did not listen on {port}:\n{}",
            bouncer.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    bouncer
}

/// How many of `calls` calls by `callers` failed, and the distinct errors.
async fn trial<F, Fut>(callers: usize, calls: u64, op: F) -> (u64, Vec<String>)
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), String>> + Send,
{
    let failed = Arc::new(AtomicU64::new(0));
    let errors: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let op = Arc::new(op);
    let (f, e) = (failed.clone(), errors.clone());
    drive(callers, calls, move || {
        let (op, f, e) = (op.clone(), f.clone(), e.clone());
        async move {
            if let Err(error) = op().await {
                f.fetch_add(1, Ordering::Relaxed);
                let error = condensed(&error);
                let mut errors = e.lock().unwrap();
                if errors.len() < 3 && !errors.contains(&error) {
                    errors.push(error);
                }
            }
        }
    })
    .await;
    let errors = errors.lock().unwrap().clone();
    (failed.load(Ordering::Relaxed), errors)
}

/// The server's own words in a store error, statement numbers as `N`.
fn condensed(error: &str) -> String {
    let text = error
        .rsplit_once("error returned from database: ")
        .map_or(error, |(_, e)| e);
    let text = text.split(" at line ").next().unwrap_or(text);
    match text.split_once("sqlx_s_") {
        Some((head, tail)) => {
            let rest = tail.trim_start_matches(|c: char| c.is_ascii_digit());
            format!("{head}sqlx_s_N{rest}")
        }
        None => text.to_owned(),
    }
}

async fn connect(url: &str, cache: Option<usize>) -> Result<PostgresStore, String> {
    let options = PostgresOptions::default()
        .create_table(false)
        .reaper_interval(None)
        .connect_timeout(Duration::from_secs(3));
    match cache {
        None => PostgresStore::connect_with(url, options).await,
        Some(capacity) => {
            let connect: PgConnectOptions = url.parse().unwrap();
            let pool = PgPoolOptions::new()
                .max_connections(10)
                .connect_lazy_with(connect.statement_cache_capacity(capacity));
            PostgresStore::from_pool(pool, options).await
        }
    }
    .map_err(|e| e.to_string())
}

/// A first call, then its replay; an error as text.
async fn first_and_replay(store: &PostgresStore) -> Result<(), String> {
    let key = key();
    for _ in 0..2 {
        Call::new(SCOPE, &key)
            .ttl(TTL)
            .store(store.clone())
            .run(async { 7_u32 })
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// A duplicate that arrives while the first call's body runs (300 ms): how long after the
/// body's end it gets the result (LISTEN/NOTIFY wakes it), or its error; `wait` 2 s.
async fn waiter(store: &PostgresStore) -> String {
    let key = key();
    let call = || {
        Call::new(SCOPE, &key)
            .ttl(TTL)
            .wait(Duration::from_secs(2))
            .store(store.clone())
    };
    let body_end = Arc::new(std::sync::Mutex::new(None::<Instant>));
    let end = body_end.clone();
    let first = call().run(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        *end.lock().unwrap() = Some(Instant::now());
        1_u32
    });
    let second = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let answer = call().run(async { 2_u32 }).await;
        (answer, Instant::now())
    };
    let (first, (second, at)) = tokio::join!(first, second);
    if let Err(e) = first {
        return format!("first call failed: {}", condensed(&e.to_string()));
    }
    match second {
        Ok(outcome) if outcome.value == 1 => {
            let end = body_end.lock().unwrap().expect("the body ran");
            format!(
                "woken {:.1} ms after the body ended",
                at.duration_since(end).as_secs_f64() * 1e3
            )
        }
        Ok(outcome) => format!("ran the body again (value {})", outcome.value),
        Err(e) => format!("error: {}", condensed(&e.to_string())),
    }
}

/// The PgBouncer rows.
pub async fn rows(server: &CapacityServer, probe: &mut Probe) {
    println!("\n## Through PgBouncer\n");
    let Some(bin) = binary() else {
        println!(
            "pgbouncer is not installed (`apt-get install -y pgbouncer` on Debian): not measured."
        );
        return;
    };
    let version = Command::new(&bin)
        .arg("--version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("?")
                .to_owned()
        })
        .unwrap_or_default();
    let modern = version
        .split_whitespace()
        .nth(1)
        .and_then(|v| {
            let mut parts = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
            Some((parts.next()?, parts.next()?))
        })
        .is_some_and(|v| v >= (1, 21));
    println!(
        "{version} (`max_prepared_statements`, PgBouncer's support of protocol-level prepared statements in transaction mode, exists from 1.21: {}). Each trial: 200 first calls, each followed by its replay.\n",
        if modern { "set to 200 here" } else { "not in this version" }
    );
    let ignore = "ignore_startup_parameters = extra_float_digits,options";
    let prepared = if modern {
        "max_prepared_statements = 200"
    } else {
        ""
    };
    let trials: [(&str, &str, String, Option<usize>); 4] = [
        ("transaction", "PostgresStore::connect_with (defaults)", String::new(), None),
        (
            "transaction",
            "PostgresStore::connect_with (defaults)",
            format!("{ignore}\n{prepared}"),
            None,
        ),
        (
            "transaction",
            "PostgresStore::from_pool, statement_cache_capacity(0)",
            format!("{ignore}\n{prepared}"),
            Some(0),
        ),
        (
            "session",
            "PostgresStore::connect_with (defaults)",
            ignore.to_owned(),
            None,
        ),
    ];
    println!(
        "| pool_mode | store | pgbouncer settings | connect | 1 caller: failed calls | 64 callers: failed calls | errors | a duplicate waiting on the first call |\n|---|---|---|---|---|---|---|---|"
    );
    let mut working = Vec::new();
    for (n, (mode, how, extra, cache)) in trials.into_iter().enumerate() {
        let bouncer = start(&bin, server, mode, &extra, n);
        let settings = if extra.trim().is_empty() {
            "(none)".to_owned()
        } else {
            format!("`{}`", extra.trim().replace('\n', "`, `"))
        };
        let store = match tokio::time::timeout(
            Duration::from_secs(10),
            connect(&bouncer.url(), cache),
        )
        .await
        {
            Ok(Ok(store)) => store,
            Ok(Err(e)) => {
                println!(
                    "| {mode} | {how} | {settings} | fails: `{}` | | | | |",
                    condensed(&e)
                );
                continue;
            }
            Err(_) => {
                println!("| {mode} | {how} | {settings} | hangs (10 s) | | | | |");
                continue;
            }
        };
        let mut errors = Vec::new();
        let mut failed = Vec::new();
        for callers in [1, CALLERS] {
            let s = store.clone();
            let (bad, mut seen) = trial(callers, 200, move || {
                let s = s.clone();
                async move { first_and_replay(&s).await }
            })
            .await;
            failed.push(bad);
            seen.retain(|e| !errors.contains(e));
            errors.extend(seen);
        }
        let waited = tokio::time::timeout(Duration::from_secs(5), waiter(&store))
            .await
            .unwrap_or_else(|_| "no answer in 5 s".into());
        println!(
            "| {mode} | {how} | {settings} | ok | {} of 400 | {} of 400 | {} | {waited} |",
            failed[0],
            failed[1],
            if errors.is_empty() {
                "none".to_owned()
            } else {
                errors
                    .iter()
                    .map(|e| format!("`{}`", e.replace('|', "/")))
                    .collect::<Vec<_>>()
                    .join("; ")
            }
        );
        if failed.iter().all(|&f| f == 0) {
            working.push((mode, how, bouncer, store));
        }
    }
    for (mode, how, bouncer, store) in working {
        println!("\n### Per call through PgBouncer, {mode} mode, {how}\n");
        println!(
            "{}---|",
            COST_HEADER.replacen(" |\n", " | pgbouncer CPU µs/call |\n", 1)
        );
        let value = Arc::new(result_of(64));
        let keys: Arc<Vec<String>> = Arc::new((0..1_024).map(|_| key()).collect());
        for key in keys.iter() {
            let value = value.to_string();
            Call::new(SCOPE, key)
                .ttl(TTL)
                .store(store.clone())
                .run(async move { value })
                .await
                .expect("a first call through pgbouncer");
        }
        for callers in [1, CALLERS] {
            let calls = crate::pg_capacity::scaled(if callers == 1 { 3_000 } else { 20_000 });
            let replay = {
                let (store, keys) = (store.clone(), keys.clone());
                move || {
                    let (store, keys) = (store.clone(), keys.clone());
                    async move {
                        let key = &keys[crate::workload::below(keys.len() as u64) as usize];
                        let outcome = Call::new(SCOPE, key)
                            .ttl(TTL)
                            .store(store.clone())
                            .run::<String, _>(async { unreachable!("stored") })
                            .await
                            .expect("a replay");
                        std::hint::black_box(outcome.value as String);
                    }
                }
            };
            let before = bouncer.cpu();
            let (done, cost) = phase(probe, callers, calls, "idem_records", replay).await;
            println!(
                "{} {:.1} |",
                cost_row("replay", callers, done, &cost),
                (bouncer.cpu() - before) * 1e6 / (done + warmup(callers)) as f64
            );
            let first = {
                let (store, value) = (store.clone(), value.clone());
                move || {
                    let (store, value) = (store.clone(), value.clone());
                    async move { first_call(&store, TTL, &value).await }
                }
            };
            let before = bouncer.cpu();
            let (done, cost) = phase(probe, callers, calls, "idem_records", first).await;
            println!(
                "{} {:.1} |",
                cost_row("first call", callers, done, &cost),
                (bouncer.cpu() - before) * 1e6 / (done + warmup(callers)) as f64
            );
        }
    }
    println!(
        "\npgbouncer CPU: its process's utime+stime over the phase and its warm-up, per call (the server CPU column is PostgreSQL's only)."
    );
}
