//! The capacity runs' PostgreSQL and what they read from it: the tests' server started again
//! with `pg_stat_statements` loaded and `full_page_writes` on, and a probe that reads, around
//! each phase, the server's own counters (per-statement time, blocks and WAL; the WAL position;
//! the CPU of every server process) and the client's CPU.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use sqlx::postgres::PgConnection;
use sqlx::{Connection, Row};

use crate::postgres_server::PostgresServer;

/// Clock ticks per second of `/proc/<pid>/stat` (`getconf CLK_TCK` on Linux).
const TICKS: f64 = 100.0;

/// The tests' server, stopped and started again by this module with the capacity settings;
/// stopped again when dropped (before the tests' harness removes its directory).
pub struct CapacityServer {
    inner: PostgresServer,
    data: PathBuf,
    bin: PathBuf,
}

impl CapacityServer {
    pub fn start() -> CapacityServer {
        let inner = PostgresServer::quiet();
        let data = PathBuf::from(inner.psql("SHOW data_directory"));
        let bin = PathBuf::from(inner.psql("SELECT setting FROM pg_config WHERE name = 'BINDIR'"));
        let sockets = inner.psql("SHOW unix_socket_directories");
        let mut inner = inner;
        inner.stop();
        let server = CapacityServer { inner, data, bin };
        let options = [
            format!("-p {}", server.inner.port()),
            "-c listen_addresses=127.0.0.1".to_owned(),
            format!("-c unix_socket_directories={sockets}"),
            // No flush waits: CPU, not the disk, is measured. Full-page images stay on, as
            // in production, so that the WAL figures hold them.
            "-c fsync=off".to_owned(),
            "-c full_page_writes=on".to_owned(),
            "-c shared_preload_libraries=pg_stat_statements".to_owned(),
            "-c pg_stat_statements.max=1000".to_owned(),
            "-c max_connections=200".to_owned(),
            "-c log_autovacuum_min_duration=0".to_owned(),
        ]
        .join(" ");
        let log = server.data.with_file_name("capacity.log");
        let output = server
            .as_server_user("pg_ctl")
            .args(["start", "-w", "-t", "30", "-D"])
            .arg(&server.data)
            .arg("-l")
            .arg(&log)
            .arg("-o")
            .arg(options)
            .output()
            .expect("run pg_ctl");
        assert!(
            output.status.success(),
            "PostgreSQL did not start again: {}\n{}",
            String::from_utf8_lossy(&output.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        server.psql("CREATE EXTENSION IF NOT EXISTS pg_stat_statements");
        server.psql("CREATE EXTENSION IF NOT EXISTS pgstattuple");
        server
    }

    fn as_server_user(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        let root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0");
        if root {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(path);
            command
        } else {
            Command::new(path)
        }
    }

    pub fn url(&self) -> String {
        self.inner.url()
    }

    pub fn port(&self) -> u16 {
        self.inner.port()
    }

    pub fn psql(&self, sql: &str) -> String {
        self.inner.psql(sql)
    }

    /// Runs `sql` with psql; its output, or the server's error.
    pub fn try_psql(&self, sql: &str) -> String {
        let output = self.inner.try_psql(sql);
        let text = if output.status.success() {
            output.stdout
        } else {
            output.stderr
        };
        String::from_utf8_lossy(&text).trim().to_owned()
    }

    /// Runs `sql` with psql; the server's notices (psql's standard error).
    pub fn psql_notices(&self, sql: &str) -> String {
        String::from_utf8_lossy(&self.inner.try_psql(sql).stderr).into_owned()
    }

    /// The server's log since it was started again.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data.with_file_name("capacity.log")).unwrap_or_default()
    }

    pub fn postmaster(&self) -> u32 {
        self.inner.pid().expect("the postmaster's pid")
    }
}

impl Drop for CapacityServer {
    fn drop(&mut self) {
        let _ = self
            .as_server_user("pg_ctl")
            .args(["stop", "-m", "immediate", "-w", "-D"])
            .arg(&self.data)
            .output();
    }
}

/// The 1-minute load average, as `/proc/loadavg` gives it.
pub fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().next().unwrap_or("?").to_owned())
        .unwrap_or_else(|_| "?".into())
}

/// utime + stime of `/proc/<pid>/stat`, and cutime + cstime (children that ended and were
/// waited for), in ticks.
fn cpu_of(pid: u32) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
    Some((field(14)? + field(15)?, field(16)? + field(17)?))
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// CPU seconds of the whole server so far: the postmaster, its children alive now, and the
/// children that ended (the postmaster waits for them).
pub fn server_cpu(postmaster: u32) -> f64 {
    let (own, ended) = cpu_of(postmaster).unwrap_or((0, 0));
    let mut ticks = own + ended;
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            if parent_of(pid) == Some(postmaster)
                && let Some((own, _)) = cpu_of(pid)
            {
                ticks += own;
            }
        }
    }
    ticks as f64 / TICKS
}

/// CPU seconds of this process (every thread) so far.
pub fn client_cpu() -> f64 {
    cpu_of(std::process::id()).map_or(0.0, |(own, _)| own as f64 / TICKS)
}

/// What `pg_stat_statements` holds for the statements of one kind, summed.
#[derive(Debug, Default, Clone, Copy)]
pub struct Statements {
    pub calls: f64,
    pub exec_ms: f64,
    pub rows: f64,
    pub blocks_hit: f64,
    pub wal_fpi: f64,
}

/// What a phase cost, read around it.
#[derive(Debug, Clone)]
pub struct Cost {
    pub wall: Duration,
    pub server_cpu: f64,
    pub client_cpu: f64,
    /// WAL written by the whole server (`pg_current_wal_lsn` moved by this many bytes).
    pub wal_bytes: f64,
    /// Every statement but the probe's.
    pub all: Statements,
    /// The statements that name `matching` (the store's table).
    pub matching: Statements,
    pub load_before: String,
    pub load_after: String,
}

/// A connection of its own that reads the counters; its statements start with `/* probe */`
/// and are left out of the sums.
pub struct Probe {
    conn: PgConnection,
    postmaster: u32,
}

/// The state at the start of a phase.
pub struct Mark {
    at: Instant,
    server_cpu: f64,
    client_cpu: f64,
    lsn: String,
    load: String,
}

impl Probe {
    pub async fn new(server: &CapacityServer) -> Probe {
        let options: sqlx::postgres::PgConnectOptions = server.url().parse().unwrap();
        let conn = PgConnection::connect_with(&options.application_name("idem-bench-probe"))
            .await
            .expect("the probe's connection");
        Probe {
            conn,
            postmaster: server.postmaster(),
        }
    }

    /// Runs a statement of the probe's own (not counted).
    pub async fn exec(&mut self, sql: &str) {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("/* probe */ {sql}")))
            .execute(&mut self.conn)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// One number (a float) of a statement of the probe's own.
    pub async fn number(&mut self, sql: &str) -> f64 {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!("/* probe */ {sql}")))
            .persistent(false)
            .fetch_one(&mut self.conn)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        row.try_get::<f64, _>(0)
            .or_else(|_| row.try_get::<i64, _>(0).map(|n| n as f64))
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// One text of a statement of the probe's own.
    pub async fn text(&mut self, sql: &str) -> String {
        sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(format!("/* probe */ {sql}")))
            .persistent(false)
            .fetch_one(&mut self.conn)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// Starts a phase: resets `pg_stat_statements` and notes the counters.
    pub async fn mark(&mut self) -> Mark {
        let load = load();
        self.exec("SELECT pg_stat_statements_reset()").await;
        let lsn = self.text("SELECT pg_current_wal_lsn()::text").await;
        Mark {
            at: Instant::now(),
            server_cpu: server_cpu(self.postmaster),
            client_cpu: client_cpu(),
            lsn,
            load,
        }
    }

    /// Ends a phase started at `mark`.
    pub async fn cost(&mut self, mark: &Mark, matching: &str) -> Cost {
        let wall = mark.at.elapsed();
        let server = server_cpu(self.postmaster) - mark.server_cpu;
        let client = client_cpu() - mark.client_cpu;
        let wal_bytes = self
            .number(&format!(
                "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '{}')::float8",
                mark.lsn
            ))
            .await;
        let all = self.statements("true").await;
        let matching = self
            .statements(&format!("query LIKE '%{}%'", matching.replace('\'', "''")))
            .await;
        Cost {
            wall,
            server_cpu: server,
            client_cpu: client,
            wal_bytes,
            all,
            matching,
            load_before: mark.load.clone(),
            load_after: load(),
        }
    }

    /// The sums of the statements that match `filter` since the last mark.
    pub async fn statements(&mut self, filter: &str) -> Statements {
        let sql = format!(
            "/* probe */ SELECT coalesce(sum(calls), 0)::float8, coalesce(sum(total_exec_time), 0)::float8, \
                coalesce(sum(rows), 0)::float8, coalesce(sum(shared_blks_hit), 0)::float8, \
                coalesce(sum(shared_blks_read), 0)::float8, coalesce(sum(wal_bytes), 0)::float8, \
                coalesce(sum(wal_fpi), 0)::float8 \
             FROM pg_stat_statements WHERE query NOT LIKE '/* probe */%' AND ({filter})"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .persistent(false)
            .fetch_one(&mut self.conn)
            .await
            .expect("pg_stat_statements");
        let f = |i: usize| row.get::<f64, _>(i);
        Statements {
            calls: f(0),
            exec_ms: f(1),
            rows: f(2),
            blocks_hit: f(3),
            wal_fpi: f(6),
        }
    }
}
