//! A PostgreSQL server of the test's own: a copy of a data directory made once by `initdb`,
//! started with `pg_ctl` on a free loopback port (never a standard one), as the unprivileged
//! `postgres` user when the tests run as root, with `fsync=off` and every statement logged;
//! stopped and removed (and its log printed if the test failed) when dropped.
//!
//! The tests never touch a server they did not start: every address here is `127.0.0.1` and
//! a port this harness chose.

use std::io::ErrorKind;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const INSTALL: &str = "the PostgreSQL tests need the server binaries (initdb, pg_ctl, postgres, \
psql) and did not find them in /usr/lib/postgresql/*/bin or on PATH. Install them with \
`sudo apt-get install postgresql` (Debian/Ubuntu), `dnf install postgresql-server` (Fedora) or \
`brew install postgresql` (macOS), or point IDEM_PG_BIN at the directory that holds them";

/// Ports PostgreSQL and its neighbours use by default, never chosen.
const STANDARD_PORTS: &[u16] = &[5432, 5433, 5434, 5435, 6432];

static SERVERS: AtomicUsize = AtomicUsize::new(0);

/// A running PostgreSQL owned by the test.
pub struct PostgresServer {
    port: u16,
    dir: PathBuf,
    running: bool,
    /// Whether every statement is logged (`log_statement=all`).
    log_statements: bool,
}

impl PostgresServer {
    /// Starts a server: user `postgres`, database `postgres`, trusted on 127.0.0.1, logging
    /// every statement.
    pub fn start() -> PostgresServer {
        PostgresServer::start_with(true)
    }

    /// The server of this test process, started on first use and shared by its tests (each
    /// with its own keys, and its own application name where it counts statements). Never
    /// dropped: a watcher kills it and removes its directory when this process exits, however
    /// it exits.
    pub fn shared() -> &'static PostgresServer {
        static SHARED: OnceLock<PostgresServer> = OnceLock::new();
        SHARED.get_or_init(|| {
            let server = PostgresServer::start();
            server.watch();
            server
        })
    }

    /// Starts a watcher that holds a pipe to this process: when it closes (this process
    /// exited), the watcher kills the postmaster (its backends follow) and removes the
    /// directory.
    fn watch(&self) {
        let pid = self.pid().expect("the postmaster's pid");
        let script = format!(
            "cat >/dev/null; kill -KILL {pid} 2>/dev/null; while kill -0 {pid} 2>/dev/null; do sleep 0.05; done; sleep 0.5; rm -rf '{}'",
            self.dir.display()
        );
        let mut watcher = Command::new("sh")
            .args(["-c", &script])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start the server's watcher");
        // The write end stays open until this process exits; the watcher is reaped by init.
        std::mem::forget(watcher.stdin.take());
        std::mem::forget(watcher);
    }

    /// Starts a server that logs no statement (for measurements).
    pub fn quiet() -> PostgresServer {
        PostgresServer::start_with(false)
    }

    fn start_with(log_statements: bool) -> PostgresServer {
        let n = SERVERS.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("idem-pg-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the server's temporary directory");
        let data = dir.join("data");
        copy_dir(template(), &data);
        give_to_server_user(&dir);
        let mut server = PostgresServer {
            port: 0,
            dir,
            running: false,
            log_statements,
        };
        // Another process may take the free port between the look and the bind: try others.
        for _ in 0..5 {
            server.port = free_port();
            if server.launch() {
                return server;
            }
        }
        panic!("PostgreSQL could not bind a free port:\n{}", server.log());
    }

    /// Starts the server on its port and waits until it accepts connections; false if the
    /// port was taken.
    fn launch(&mut self) -> bool {
        let options = [
            format!("-p {}", self.port),
            "-c listen_addresses=127.0.0.1".to_owned(),
            format!("-c unix_socket_directories={}", self.dir.display()),
            "-c fsync=off".to_owned(),
            "-c full_page_writes=off".to_owned(),
            format!(
                "-c log_statement={}",
                if self.log_statements { "all" } else { "none" }
            ),
            "-c log_line_prefix='%m [%p] %a: '".to_owned(),
            "-c max_connections=200".to_owned(),
        ]
        .join(" ");
        let output = as_server_user(&binary("pg_ctl"))
            .arg("start")
            .arg("-w")
            .args(["-t", "30"])
            .arg("-D")
            .arg(self.dir.join("data"))
            .arg("-l")
            .arg(self.log_path())
            .arg("-o")
            .arg(options)
            .output()
            .unwrap_or_else(|e| panic!("cannot run pg_ctl: {e}"));
        if output.status.success() {
            self.running = true;
            return true;
        }
        if self.log().contains("could not bind") || self.log().contains("already in use") {
            return false;
        }
        panic!(
            "PostgreSQL did not start: {}\n{}",
            String::from_utf8_lossy(&output.stderr),
            self.log()
        );
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The port the server listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the server at once (`pg_ctl stop -m immediate`: no checkpoint, clients cut off);
    /// its data stays, for [`start_again`](PostgresServer::start_again).
    pub fn stop(&mut self) {
        if !self.running {
            return;
        }
        let _ = as_server_user(&binary("pg_ctl"))
            .args(["stop", "-m", "immediate", "-w", "-D"])
            .arg(self.dir.join("data"))
            .output();
        self.running = false;
    }

    /// Kills the postmaster with SIGKILL, as a crash would (its backends end on their own).
    pub fn kill(&mut self) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        // The backends notice the postmaster is gone; pg_ctl cleans up whatever is left.
        std::thread::sleep(Duration::from_millis(200));
        self.stop();
        self.running = false;
    }

    /// Starts the stopped server again, on the same port and data.
    pub fn start_again(&mut self) {
        self.stop();
        let deadline = Instant::now() + Duration::from_secs(30);
        // The old socket may linger for a moment after the stop.
        while !self.launch() {
            assert!(
                Instant::now() < deadline,
                "port {} stayed busy after the stop",
                self.port
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The postmaster's process id, from `postmaster.pid`.
    pub fn pid(&self) -> Option<u32> {
        let text = std::fs::read_to_string(self.dir.join("data/postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    /// Runs `sql` with `psql` as the harness's own client (application name `idem-harness`)
    /// and returns its unaligned output.
    pub fn psql(&self, sql: &str) -> String {
        let output = self.try_psql(sql);
        assert!(
            output.status.success(),
            "psql {sql:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// Runs `sql` with `psql`, whatever happens.
    pub fn try_psql(&self, sql: &str) -> Output {
        self.psql_command()
            .args(["-c", sql])
            .output()
            .unwrap_or_else(|e| panic!("cannot run psql: {e}"))
    }

    /// A `psql` command line connected to the server (add `-c sql`).
    pub fn psql_command(&self) -> Command {
        let mut command = Command::new(binary("psql"));
        let port = self.port.to_string();
        command
            .env("PGAPPNAME", "idem-harness")
            .env("PGCONNECT_TIMEOUT", "5")
            .args([
                "-X",
                "-q",
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
            ])
            .args(["-p", &port, "-U", "postgres", "-d", "postgres"]);
        command
    }

    /// Ends every backend of the connections named `application` (`pg_terminate_backend`);
    /// returns how many.
    pub fn terminate(&self, application: &str) -> usize {
        let sql = format!(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = '{}'",
            application.replace('\'', "''")
        );
        self.psql(&sql).parse().expect("a count")
    }

    /// The statements the server logged so far, for connections named `application`: the
    /// text after `statement: ` or `execute <name>: `, one per execution.
    pub fn statements(&self, application: &str) -> Vec<String> {
        let marker = format!("] {application}: LOG:  ");
        let mut out = Vec::new();
        for line in self.log().lines() {
            let Some((_, logged)) = line.split_once(&marker) else {
                continue;
            };
            if let Some(sql) = logged.strip_prefix("statement: ") {
                out.push(sql.to_owned());
            } else if let Some(rest) = logged.strip_prefix("execute ")
                && let Some((_, sql)) = rest.split_once(": ")
            {
                out.push(sql.to_owned());
            }
        }
        out
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("postgres.log")
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            let log = self.log();
            // The statements of a whole test make a long log: its end tells what went wrong.
            let tail: Vec<&str> = log.lines().rev().take(200).collect();
            eprintln!(
                "---- PostgreSQL log (port {}, last {} lines) ----\n{}\n---- end of log ----",
                self.port,
                tail.len(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The directory of the PostgreSQL binaries: `IDEM_PG_BIN`, else the newest
/// `/usr/lib/postgresql/<version>/bin` (Debian), else the one of `initdb` on PATH.
fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Ok(dir) = std::env::var("IDEM_PG_BIN") {
            return PathBuf::from(dir);
        }
        let debian = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let version: u32 = entry.file_name().to_str()?.parse().ok()?;
                let bin = entry.path().join("bin");
                bin.join("initdb").exists().then_some((version, bin))
            })
            .max();
        if let Some((_, bin)) = debian {
            return bin;
        }
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .find(|dir| dir.join("initdb").exists())
            .unwrap_or_else(|| panic!("{INSTALL}"))
    })
}

fn binary(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    if !path.exists() {
        panic!("{INSTALL} (`{}` is missing)", path.display());
    }
    path
}

fn running_as_root() -> bool {
    static ROOT: OnceLock<bool> = OnceLock::new();
    *ROOT.get_or_init(|| {
        Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
    })
}

/// A command that runs `program` as the `postgres` user when the tests run as root
/// (PostgreSQL refuses to run as root), else as the current user.
fn as_server_user(program: &Path) -> Command {
    if running_as_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

fn give_to_server_user(dir: &Path) {
    if running_as_root() {
        let status = Command::new("chown")
            .args(["-R", "postgres:"])
            .arg(dir)
            .status()
            .expect("run chown");
        assert!(status.success(), "chown -R postgres {}", dir.display());
    }
}

/// A data directory made by `initdb` once per machine and binary directory, copied by every
/// server (initdb takes seconds, a copy a fraction of one).
fn template() -> &'static Path {
    static TEMPLATE: OnceLock<PathBuf> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        let tag = bin_dir().display().to_string().replace('/', "_");
        let uid = if running_as_root() { "root" } else { "user" };
        let template = std::env::temp_dir().join(format!("idem-pg-template-{uid}{tag}"));
        if template.join("PG_VERSION").exists() && template.join("postgresql.conf").exists() {
            return template;
        }
        let work = std::env::temp_dir().join(format!("idem-pg-initdb-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work).expect("create initdb's directory");
        give_to_server_user(&work);
        let data = work.join("data");
        let output = as_server_user(&binary("initdb"))
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
            ])
            .output();
        let output = match output {
            Ok(output) => output,
            Err(e) if e.kind() == ErrorKind::NotFound => panic!("{INSTALL}: {e}"),
            Err(e) => panic!("cannot run initdb: {e}"),
        };
        assert!(
            output.status.success(),
            "initdb failed:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        // Made aside and renamed: another test process may be making it at the same time.
        if std::fs::rename(&data, &template).is_err() {
            assert!(
                template.join("PG_VERSION").exists(),
                "cannot move the initdb template to {}",
                template.display()
            );
        }
        let _ = std::fs::remove_dir_all(&work);
        template
    })
}

fn copy_dir(from: &Path, to: &Path) {
    let status = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .expect("run cp");
    assert!(
        status.success(),
        "cp -a {} {}",
        from.display(),
        to.display()
    );
    // PostgreSQL refuses a data directory others can read.
    let _ = Command::new("chmod").arg("700").arg(to).status();
}

/// A loopback port nothing listens on, below 55536 and not a standard one.
fn free_port() -> u16 {
    loop {
        let port = 20_000 + (rand_u16() % 35_000);
        if STANDARD_PORTS.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

fn rand_u16() -> u16 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(Instant::now()) as u16
}
