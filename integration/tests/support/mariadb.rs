//! A MariaDB server of the test process's own: `mariadb-install-db` into a temporary directory,
//! then `mariadbd` on a free loopback port below 55536 (never 3306 or another standard one)
//! with its own socket and data directory, as the unprivileged `mysql` user when the tests run
//! as root (`setpriv`, which runs the server itself, not a child of it), with every statement
//! in its general log. One server per test process ([`MariaDb::shared`]), each test on
//! databases of its own ([`MariaDb::database`]); it is killed, and its directory removed, when
//! the process exits, by a watcher that holds the other end of a pipe to the process.
//!
//! The tests never touch a server they did not start: every URL here is `127.0.0.1` and the
//! port this harness chose, checked when the URL is built.

use std::io::{ErrorKind, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

const INSTALL: &str = "the MySQL tests need MariaDB's server (mariadbd, mariadb-install-db and the \
mariadb client) and did not find it. Install it with `sudo apt-get install mariadb-server` \
(Debian/Ubuntu) or `dnf install mariadb-server` (Fedora)";

/// Ports MySQL, MariaDB and their neighbours use by default, never chosen.
const STANDARD_PORTS: &[u16] = &[3306, 3307, 3308, 33060, 33062, 4444, 4567, 4568];

/// How long the server may take to accept connections.
const START: Duration = Duration::from_secs(60);

/// A running MariaDB owned by the test process.
pub struct MariaDb {
    port: u16,
    dir: PathBuf,
    server: Mutex<Option<Child>>,
    /// The write end of the watcher's stdin: closed when this process exits, however it exits.
    _watch: Mutex<Option<ChildStdin>>,
}

impl MariaDb {
    /// The server of this test process, started on first use.
    pub fn shared() -> &'static MariaDb {
        static SHARED: OnceLock<MariaDb> = OnceLock::new();
        SHARED.get_or_init(MariaDb::start)
    }

    /// Starts a server: user `idem` (no password) allowed everything from 127.0.0.1.
    pub fn start() -> MariaDb {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "idem-mariadb-{}-{}-{:04x}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed),
            // Process ids come back: a directory a past process's watcher may still remove.
            rand_u16()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        // Its own temporary directory too: servers sharing /tmp collide on their temporary
        // tables' names.
        for sub in ["data", "tmp"] {
            std::fs::create_dir_all(dir.join(sub)).expect("create the server's directories");
        }
        std::fs::write(
            dir.join("init.sql"),
            "CREATE USER IF NOT EXISTS 'idem'@'127.0.0.1';\n\
             GRANT ALL PRIVILEGES ON *.* TO 'idem'@'127.0.0.1' WITH GRANT OPTION;\n\
             CREATE DATABASE IF NOT EXISTS idem;\n",
        )
        .expect("write the init file");
        give_to_server_user(&dir);
        install(&dir);
        for _ in 0..5 {
            let port = free_port();
            if let Some(server) = MariaDb::launch(&dir, port) {
                return server;
            }
        }
        panic!(
            "MariaDB could not bind a free port:\n{}",
            read(&dir.join("error.log"))
        );
    }

    /// Starts `mariadbd` on `port` and waits until it answers; `None` if the port was taken.
    fn launch(dir: &Path, port: u16) -> Option<MariaDb> {
        let _ = std::fs::remove_file(dir.join("error.log"));
        let mut command = as_server_user(&binary("mariadbd"));
        command
            .arg("--no-defaults")
            .arg(format!("--datadir={}", dir.join("data").display()))
            .arg(format!("--socket={}", dir.join("mysqld.sock").display()))
            .arg(format!("--tmpdir={}", dir.join("tmp").display()))
            .arg(format!("--pid-file={}", dir.join("mysqld.pid").display()))
            .arg(format!("--log-error={}", dir.join("error.log").display()))
            .arg(format!(
                "--general-log-file={}",
                dir.join("general.log").display()
            ))
            .arg(format!("--init-file={}", dir.join("init.sql").display()))
            .arg(format!("--port={port}"))
            .args([
                "--bind-address=127.0.0.1",
                "--general-log=1",
                "--skip-name-resolve",
                "--skip-log-bin",
                "--innodb-buffer-pool-size=64M",
                "--innodb-log-file-size=16M",
                "--innodb-flush-log-at-trx-commit=2",
                "--max-connections=400",
                "--performance-schema=OFF",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("{INSTALL}: cannot run mariadbd: {e}"));
        let server = MariaDb {
            port,
            dir: dir.to_owned(),
            server: Mutex::new(None),
            _watch: Mutex::new(Some(watch(child.id(), dir))),
        };
        let deadline = Instant::now() + START;
        loop {
            if let Some(status) = child.try_wait().expect("look at mariadbd") {
                let log = server.log();
                if log.contains("Bind on TCP/IP port") || log.contains("Address already in use") {
                    // The watcher stays until this process exits: the directory is reused.
                    std::mem::forget(server._watch.lock().unwrap().take());
                    return None;
                }
                panic!("MariaDB exited ({status}) before it was ready:\n{log}");
            }
            if server
                .client()
                .arg("-e")
                .arg("SELECT 1")
                .output()
                .is_ok_and(|o| o.status.success())
            {
                *server.server.lock().unwrap() = Some(child);
                return Some(server);
            }
            assert!(
                Instant::now() < deadline,
                "MariaDB was not ready within {START:?}:\n{}",
                server.log()
            );
            // Readiness has no event to wait on but the server's answer.
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// The port the server listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `mysql://idem@127.0.0.1:<port>/<database>`.
    pub fn url(&self, database: &str) -> String {
        assert!(
            self.port != 0 && !STANDARD_PORTS.contains(&self.port),
            "the harness's port {} is one it never uses",
            self.port
        );
        assert!(!database.is_empty(), "a URL names a database");
        format!("mysql://idem@127.0.0.1:{}/{database}", self.port)
    }

    /// A new, empty database of this server and its URL.
    pub fn database(&self, name: &str) -> String {
        static N: AtomicUsize = AtomicUsize::new(0);
        let database = format!("{name}_{}", N.fetch_add(1, Ordering::Relaxed));
        self.sql(&format!("CREATE DATABASE `{database}`"));
        self.url(&database)
    }

    /// Runs `sql` as root over the socket and returns its tab-separated output.
    pub fn sql(&self, sql: &str) -> String {
        let output = self.try_sql(sql);
        assert!(
            output.status.success(),
            "mariadb {sql:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// Runs `sql` as root over the socket, whatever happens.
    pub fn try_sql(&self, sql: &str) -> Output {
        self.client()
            .args(["-N", "-B", "-e", sql])
            .output()
            .unwrap_or_else(|e| panic!("{INSTALL}: cannot run mariadb: {e}"))
    }

    fn client(&self) -> Command {
        let mut command = Command::new(binary("mariadb"));
        command
            .arg("--no-defaults")
            .arg(format!(
                "--socket={}",
                self.dir.join("mysqld.sock").display()
            ))
            .args(["-u", "root", "--connect-timeout=5"]);
        command
    }

    /// The statements the server ran for the connection `id` (`SELECT CONNECTION_ID()`), in
    /// order: each query sent as text, and each execution of a prepared statement, from the
    /// general log. The general log is written as the statements arrive.
    pub fn statements(&self, id: u64) -> Vec<String> {
        let log = read(&self.dir.join("general.log"));
        let mut out = Vec::new();
        for line in log.lines() {
            // `<time>\t<id> <Command>\t<text>`, the time left out (`\t\t`) when it did not
            // change.
            let mut parts = line.split('\t');
            let head = parts.by_ref().find(|part| {
                let mut words = part.split_whitespace();
                matches!(
                    (words.next(), words.next(), words.next()),
                    (Some(id), Some(command), None)
                        if id.parse::<u64>().is_ok() && command.chars().all(|c| c.is_ascii_alphabetic())
                )
            });
            let Some(head) = head else {
                continue;
            };
            let mut words = head.split_whitespace();
            let (Some(thread), Some(command)) = (words.next(), words.next()) else {
                continue;
            };
            if thread.parse::<u64>().ok() == Some(id) && matches!(command, "Query" | "Execute") {
                out.push(parts.collect::<Vec<_>>().join("\t"));
            }
        }
        out
    }

    /// The server's error log so far.
    pub fn log(&self) -> String {
        read(&self.dir.join("error.log"))
    }
}

/// A log file's text; bound bytes (tokens) in the general log are not UTF-8.
fn read(path: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned()
}

/// A watcher of this process: when its stdin closes (this process exited), it kills the server
/// `pid` and removes `dir`.
fn watch(pid: u32, dir: &Path) -> ChildStdin {
    let script = format!(
        "cat >/dev/null; kill -KILL {pid} 2>/dev/null; while kill -0 {pid} 2>/dev/null; do sleep 0.05; done; rm -rf '{}'",
        dir.display()
    );
    let mut watcher = Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the server's watcher");
    let stdin = watcher.stdin.take().expect("the watcher's stdin");
    // Reaped by init once this process is gone.
    std::mem::forget(watcher);
    stdin
}

/// Creates the system tables in `dir/data`.
fn install(dir: &Path) {
    let output = as_server_user(&binary("mariadb-install-db"))
        .arg("--no-defaults")
        .arg(format!("--datadir={}", dir.join("data").display()))
        .arg(format!("--tmpdir={}", dir.join("tmp").display()))
        .args([
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
            "--skip-name-resolve",
        ])
        .output();
    let output = match output {
        Ok(output) => output,
        Err(e) if e.kind() == ErrorKind::NotFound => panic!("{INSTALL}: {e}"),
        Err(e) => panic!("cannot run mariadb-install-db: {e}"),
    };
    if !output.status.success() {
        let _ = std::fs::remove_dir_all(dir);
    }
    assert!(
        output.status.success(),
        "mariadb-install-db failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `name` in /usr/sbin, /usr/bin or on PATH.
fn binary(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    ["/usr/sbin", "/usr/bin"]
        .iter()
        .map(PathBuf::from)
        .chain(std::env::split_paths(&path))
        .map(|dir| dir.join(name))
        .find(|file| file.exists())
        .unwrap_or_else(|| panic!("{INSTALL} (`{name}` is missing)"))
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

/// A command that runs `program` as the `mysql` user when the tests run as root, else as the
/// current user: `setpriv` execs it, so the child is the program itself.
fn as_server_user(program: &Path) -> Command {
    if running_as_root() {
        let mut command = Command::new("setpriv");
        command
            .args(["--reuid=mysql", "--regid=mysql", "--init-groups", "--"])
            .arg(program);
        command
    } else {
        Command::new(program)
    }
}

fn give_to_server_user(dir: &Path) {
    if running_as_root() {
        let status = Command::new("chown")
            .args(["-R", "mysql:"])
            .arg(dir)
            .status()
            .expect("run chown");
        assert!(status.success(), "chown -R mysql {}", dir.display());
    }
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

impl Drop for MariaDb {
    fn drop(&mut self) {
        if let Some(mut child) = self.server.lock().unwrap().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Closing the pipe lets the watcher remove the directory.
        self._watch
            .lock()
            .unwrap()
            .take()
            .map(|mut pipe| pipe.flush());
    }
}
