//! A PgBouncer of the test's own in front of a [`PostgresServer`] of the test's own: the
//! system's `pgbouncer` with a configuration file in a temporary directory, on a free loopback
//! port (never 5432, 6432 or another standard one), in transaction mode with a small pool, as
//! the unprivileged `postgres` user when the tests run as root (`pgbouncer -u postgres`). It is
//! killed when dropped, and by a watcher when the test process exits however it exits.
//!
//! The tests never touch a server they did not start: every address here is `127.0.0.1` and a
//! port this harness chose.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use super::postgres::PostgresServer;

const INSTALL: &str = "the PgBouncer tests need the `pgbouncer` binary (in /usr/sbin, /usr/bin or \
on PATH, or where IDEM_PGBOUNCER points). Install it with `sudo apt-get install pgbouncer` \
(Debian/Ubuntu), `dnf install pgbouncer` (Fedora) or `brew install pgbouncer` (macOS)";

/// Ports PostgreSQL, PgBouncer and their neighbours use by default, never chosen.
const STANDARD_PORTS: &[u16] = &[5432, 5433, 5434, 5435, 6432];

/// How long PgBouncer may take to listen.
const START: Duration = Duration::from_secs(20);

/// A running PgBouncer owned by the test.
pub struct PgBouncer {
    child: Child,
    port: u16,
    dir: PathBuf,
    /// The write end of the watcher's stdin: closed when this process exits.
    _watch: ChildStdin,
}

impl PgBouncer {
    /// Starts PgBouncer in front of `server` (its database `postgres`, user `postgres`,
    /// trusted) with `pool_mode = transaction` and `pool_size` server connections at most:
    /// every client connection shares them, one transaction at a time.
    pub fn transaction_mode(server: &PostgresServer, pool_size: usize) -> PgBouncer {
        let bin = binary();
        for attempt in 0..5 {
            let dir = std::env::temp_dir()
                .join(format!("idem-pgbouncer-{}-{attempt}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("create pgbouncer's directory");
            let port = free_port();
            write_config(&dir, server.port(), port, pool_size);
            if let Some(bouncer) = PgBouncer::launch(&bin, &dir, port) {
                return bouncer;
            }
        }
        panic!("pgbouncer could not bind a free port");
    }

    fn launch(bin: &Path, dir: &Path, port: u16) -> Option<PgBouncer> {
        let mut command = Command::new(bin);
        if running_as_root() {
            let status = Command::new("chown")
                .args(["-R", "postgres:"])
                .arg(dir)
                .status()
                .expect("run chown");
            assert!(status.success(), "chown -R postgres {}", dir.display());
            command.args(["-u", "postgres"]);
        }
        let deadline = Instant::now() + START;
        let mut child = command
            .arg(dir.join("pgbouncer.ini"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{INSTALL}: cannot run {}: {e}", bin.display()));
        let watch = watch(child.id(), dir);
        child = loop {
            if let Some(status) = child.try_wait().expect("look at pgbouncer") {
                let log = read_log(dir);
                if log.contains("Address already in use") {
                    return None;
                }
                panic!("pgbouncer exited ({status}) before it listened:\n{log}");
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break child;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                panic!(
                    "pgbouncer did not listen on {port} within {START:?}:\n{}",
                    read_log(dir)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Some(PgBouncer {
            child,
            port,
            dir: dir.to_owned(),
            _watch: watch,
        })
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres`: PostgreSQL through the pooler.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The pooler's log so far.
    pub fn log(&self) -> String {
        read_log(&self.dir)
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "---- pgbouncer log ----\n{}\n---- end of log ----",
                self.log()
            );
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn read_log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("pgbouncer.log")).unwrap_or_default()
}

/// The configuration: one database, `postgres` on the test's server, trusted; transaction
/// mode; the startup parameters sqlx sends that PgBouncer does not know
/// (`extra_float_digits`, and `options`, which carries the store's `statement_timeout`)
/// ignored instead of refused.
fn write_config(dir: &Path, server_port: u16, port: u16, pool_size: usize) {
    std::fs::write(dir.join("userlist.txt"), "\"postgres\" \"\"\n").expect("write the user list");
    let config = format!(
        "[databases]\n\
         postgres = host=127.0.0.1 port={server_port} dbname=postgres user=postgres\n\
         \n\
         [pgbouncer]\n\
         listen_addr = 127.0.0.1\n\
         listen_port = {port}\n\
         unix_socket_dir =\n\
         auth_type = trust\n\
         auth_file = {dir}/userlist.txt\n\
         pool_mode = transaction\n\
         default_pool_size = {pool_size}\n\
         min_pool_size = 0\n\
         reserve_pool_size = 0\n\
         max_client_conn = 500\n\
         ignore_startup_parameters = extra_float_digits, options\n\
         logfile = {dir}/pgbouncer.log\n\
         pidfile = {dir}/pgbouncer.pid\n",
        dir = dir.display(),
    );
    std::fs::write(dir.join("pgbouncer.ini"), config).expect("write pgbouncer.ini");
}

/// `IDEM_PGBOUNCER`, else `pgbouncer` in /usr/sbin (Debian), /usr/bin or on PATH.
fn binary() -> PathBuf {
    if let Ok(path) = std::env::var("IDEM_PGBOUNCER") {
        return PathBuf::from(path);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    [PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")]
        .into_iter()
        .chain(std::env::split_paths(&path))
        .map(|dir| dir.join("pgbouncer"))
        .find(|bin| bin.exists())
        .unwrap_or_else(|| panic!("{INSTALL}"))
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

/// A watcher of this process: when its stdin closes (this process exited), it kills `pid`.
fn watch(pid: u32, dir: &Path) -> ChildStdin {
    let script = format!(
        "cat >/dev/null; grep -q pgbouncer /proc/{pid}/cmdline 2>/dev/null && kill -KILL {pid}; rm -rf '{}'",
        dir.display()
    );
    let mut watcher = Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start pgbouncer's watcher");
    let stdin = watcher.stdin.take().expect("the watcher's stdin");
    // Reaped by init once this process is gone.
    std::mem::forget(watcher);
    stdin
}

/// A loopback port nothing listens on, not a standard one.
fn free_port() -> u16 {
    for _ in 0..100 {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .map(|addr| addr.port())
            .expect("a free loopback port");
        if !STANDARD_PORTS.contains(&port) {
            return port;
        }
    }
    panic!("no free loopback port");
}
