//! A `redis-server` of the test's own: started on a free loopback port in a temporary
//! directory, stopped (and its log printed if the test failed) when dropped.
//!
//! The tests never touch a server they did not start: every address here is `127.0.0.1` and a
//! port this harness chose.

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, mpsc};
use std::time::{Duration, Instant};

use redis::{FromRedisValue, Value};

/// How long a started server may take to answer `PING`.
const STARTUP: Duration = Duration::from_secs(10);

const INSTALL: &str = "redis-server (Redis 7.0 or later) is needed by the Redis tests and was not \
found on PATH. Install it with `sudo apt-get install redis-server` (Debian/Ubuntu), \
`brew install redis` (macOS) or `dnf install redis` (Fedora), or point IDEM_REDIS_SERVER at the \
binary";

static SERVERS: AtomicUsize = AtomicUsize::new(0);

/// A running `redis-server` owned by the test.
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    password: Option<String>,
    /// The TLS port, when the server also listens with TLS (see [`RedisServer::with_tls`]).
    tls_port: Option<u16>,
    /// More command-line options (see [`RedisServer::with_args`]).
    args: Vec<String>,
    child: Option<Child>,
    /// The harness's own connection and its client address, which [`Monitor`] leaves out.
    control: Mutex<Option<(redis::Connection, String)>>,
}

impl RedisServer {
    /// Starts a server without password.
    pub fn start() -> RedisServer {
        RedisServer::launch_new(None, false, &[])
    }

    /// Starts a server with more command-line options, such as
    /// `["--maxmemory", "2mb", "--maxmemory-policy", "allkeys-lru"]`.
    pub fn with_args(args: &[&str]) -> RedisServer {
        RedisServer::launch_new(None, false, args)
    }

    /// Starts a server that requires `password` (`requirepass`).
    pub fn with_password(password: &str) -> RedisServer {
        RedisServer::launch_new(Some(password.to_owned()), false, &[])
    }

    /// Starts a server that also listens with TLS on [`tls_url`](RedisServer::tls_url), with a
    /// certificate for `127.0.0.1` signed by a CA of its own ([`tls_ca`](RedisServer::tls_ca)).
    /// The harness itself keeps using the plain port.
    pub fn with_tls() -> RedisServer {
        RedisServer::launch_new(None, true, &[])
    }

    fn launch_new(password: Option<String>, tls: bool, args: &[&str]) -> RedisServer {
        let n = SERVERS.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("idem-redis-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the server's temporary directory");
        let mut server = RedisServer {
            port: 0,
            dir,
            password,
            tls_port: None,
            args: args.iter().map(|arg| arg.to_string()).collect(),
            child: None,
            control: Mutex::new(None),
        };
        if tls {
            make_certificates(&server.dir);
        }
        // Another process may take the free port between the look and the bind: try others.
        for _ in 0..5 {
            server.port = free_port();
            server.tls_port = tls.then(free_port);
            if server.launch() {
                return server;
            }
        }
        panic!("redis-server could not bind a free port:\n{}", server.log());
    }

    /// Spawns the server on `self.port` and waits until it answers; false if the port was
    /// taken.
    fn launch(&mut self) -> bool {
        let binary = std::env::var("IDEM_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        let mut command = Command::new(&binary);
        command
            .arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(self.dir.join("redis.log"));
        if let Some(password) = &self.password {
            command.args(["--requirepass", password]);
        }
        command.args(&self.args);
        if let Some(tls_port) = self.tls_port {
            command
                .arg("--tls-port")
                .arg(tls_port.to_string())
                .arg("--tls-cert-file")
                .arg(self.dir.join("server.pem"))
                .arg("--tls-key-file")
                .arg(self.dir.join("server.key"))
                .arg("--tls-ca-cert-file")
                .arg(self.dir.join("ca.pem"))
                .args(["--tls-auth-clients", "no"]);
        }
        match spawn_and_wait(&mut command, &binary, || self.log(), || self.answers()) {
            Some(child) => {
                self.child = Some(child);
                true
            }
            None => false,
        }
    }

    fn answers(&self) -> bool {
        let Ok(client) = redis::Client::open(self.url()) else {
            return false;
        };
        let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_millis(500)) else {
            return false;
        };
        redis::cmd("PING").query::<String>(&mut conn).is_ok()
    }

    /// The port the server listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://[:password@]127.0.0.1:<port>/0`.
    pub fn url(&self) -> String {
        match &self.password {
            Some(password) => format!("redis://:{password}@127.0.0.1:{}/0", self.port),
            None => format!("redis://127.0.0.1:{}/0", self.port),
        }
    }

    /// `rediss://127.0.0.1:<tls port>/0` of a server started [`with_tls`](RedisServer::with_tls).
    pub fn tls_url(&self) -> String {
        let port = self.tls_port.expect("the server was started with_tls");
        format!("rediss://127.0.0.1:{port}/0")
    }

    /// The CA certificate (PEM) that signed the TLS certificate of the server.
    pub fn tls_ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the server runs").id()
    }

    /// Kills the server at once (SIGKILL), as a crash would; its data is gone.
    pub fn kill(&mut self) {
        *self.control.lock().unwrap_or_else(|p| p.into_inner()) = None;
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port (killing it first if it runs), empty.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + STARTUP;
        // The old socket may linger for a moment after the kill.
        while !self.launch() {
            assert!(
                Instant::now() < deadline,
                "port {} stayed busy after the kill",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the process (SIGSTOP): connections stay open, nothing answers.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Resumes a frozen process (SIGCONT).
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(signal)
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} failed");
    }

    /// A new connection of the test's own to the server.
    pub fn connection(&self) -> redis::Connection {
        connect(&self.url())
    }

    /// Runs one command on the harness's connection, as `redis-cli -p <port> <args…>` would.
    pub fn cmd<T: FromRedisValue>(&self, args: &[&str]) -> T {
        let (name, rest) = args.split_first().expect("a command");
        let mut cmd = redis::cmd(name);
        cmd.arg(rest);
        self.control(|conn| cmd.query(conn))
            .unwrap_or_else(|e| panic!("redis-cli {args:?} failed: {e}"))
    }

    /// Runs one command with binary arguments.
    pub fn cmd_bytes<T: FromRedisValue>(&self, name: &str, args: &[&[u8]]) -> T {
        let mut cmd = redis::cmd(name);
        cmd.arg(args);
        self.control(|conn| cmd.query(conn))
            .unwrap_or_else(|e| panic!("redis-cli {name} failed: {e}"))
    }

    fn control<T>(
        &self,
        run: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> redis::RedisResult<T> {
        let mut control = self.control.lock().unwrap_or_else(|p| p.into_inner());
        if control.is_none() {
            let mut conn = self.connection();
            let info: String = redis::cmd("CLIENT").arg("INFO").query(&mut conn)?;
            let addr = info
                .split_whitespace()
                .find_map(|field| field.strip_prefix("addr="))
                .expect("CLIENT INFO names the address")
                .to_owned();
            *control = Some((conn, addr));
        }
        let (conn, _) = control.as_mut().expect("connected above");
        let result = run(conn);
        if result.is_err() {
            *control = None;
        }
        result
    }

    fn control_addr(&self) -> String {
        let _: String = self.cmd(&["PING"]);
        let control = self.control.lock().unwrap_or_else(|p| p.into_inner());
        control.as_ref().expect("connected").1.clone()
    }

    /// Starts recording the commands clients send (`MONITOR`), leaving out the harness's own
    /// and the ones scripts run inside the server.
    pub fn monitor(&self) -> Monitor<'_> {
        Monitor::start(self.connection(), self.control_addr(), move |marker| {
            let _: String = self.cmd(&["ECHO", marker]);
        })
    }

    /// Pauses every client for `duration` (`CLIENT PAUSE ms ALL`); returns at once.
    pub fn pause(&self, duration: Duration) {
        let ms = duration.as_millis().to_string();
        let _: () = self.cmd(&["CLIENT", "PAUSE", &ms, "ALL"]);
    }

    /// Returns once a pause has ended: a `PING` is answered only then.
    pub fn wait_unpaused(&self) {
        let _: String = self.cmd(&["PING"]);
    }

    /// Every key of database 0 (`KEYS *`: the test's own server holds a few).
    pub fn keys(&self) -> Vec<String> {
        self.cmd(&["KEYS", "*"])
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if self.child.is_some() {
            // A frozen server does not die of SIGKILL until it is resumed on some systems.
            let _ = Command::new("kill")
                .arg("-CONT")
                .arg(self.pid().to_string())
                .status();
        }
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "---- redis-server log (port {}) ----\n{}---- end of log ----",
                self.port,
                self.log()
            );
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Writes a CA (`ca.pem`) and a server certificate for 127.0.0.1 signed by it (`server.pem`,
/// `server.key`) into `dir`, with the `openssl` command.
pub fn make_certificates(dir: &std::path::Path) {
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .expect("write the certificate extensions");
    for args in [
        "req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=idem-test-ca -keyout ca.key -out ca.pem",
        "req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 -keyout server.key -out server.csr",
        "x509 -req -days 2 -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -extfile san.ext -out server.pem",
    ] {
        let output = match Command::new("openssl")
            .args(args.split(' '))
            .current_dir(dir)
            .output()
        {
            Ok(output) => output,
            Err(e) if e.kind() == ErrorKind::NotFound => panic!(
                "the TLS tests make their certificates with `openssl`, which was not found; \
                 install it with `sudo apt-get install openssl` (Debian/Ubuntu)"
            ),
            Err(e) => panic!("cannot run openssl: {e}"),
        };
        assert!(
            output.status.success(),
            "openssl {args} failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// A recording of the commands clients sent to one server or cluster node: see
/// [`RedisServer::monitor`] and `Node::monitor`.
pub struct Monitor<'a> {
    /// Sends the end marker through the harness's own connection.
    echo: Box<dyn Fn(&str) + 'a>,
    skip: String,
    marker: String,
    lines: mpsc::Receiver<String>,
}

static MONITORS: AtomicUsize = AtomicUsize::new(0);

impl<'a> Monitor<'a> {
    /// Starts `MONITOR` on `conn`, leaving out the commands of the client at address `skip`
    /// (the harness's own) and those scripts run inside the server; `echo` sends a marker
    /// through that client, so that [`stop`](Monitor::stop) knows where the recording ends.
    pub fn start(mut conn: redis::Connection, skip: String, echo: impl Fn(&str) + 'a) -> Self {
        // The recording thread waits for commands as long as the test runs.
        conn.set_read_timeout(None).expect("no read timeout");
        conn.send_packed_command(&redis::cmd("MONITOR").get_packed_command())
            .expect("send MONITOR");
        let ok = conn.recv_response().expect("MONITOR answers");
        assert_eq!(ok, Value::Okay, "MONITOR answers OK");
        let marker = format!(
            "idem-monitor-end-{}",
            MONITORS.fetch_add(1, Ordering::Relaxed)
        );
        let (lines_tx, lines) = mpsc::channel();
        let end = marker.clone();
        std::thread::spawn(move || {
            while let Ok(Value::SimpleString(line)) = conn.recv_response() {
                let last = line.contains(&end);
                if lines_tx.send(line).is_err() || last {
                    break;
                }
            }
        });
        Monitor {
            echo: Box::new(echo),
            skip,
            marker,
            lines,
        }
    }

    /// Stops the recording and counts the commands by name (`set`, `evalsha`, `script|load`…).
    pub fn stop(self) -> BTreeMap<String, u64> {
        (self.echo)(&self.marker);
        let mut counts = BTreeMap::new();
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(10))
                .expect("MONITOR reports the end marker");
            if line.contains(&self.marker) {
                return counts;
            }
            // `1700000000.123456 [0 127.0.0.1:40000] "SET" "key" …`; `[0 lua]` inside scripts.
            let Some((client, command)) = line
                .split_once(" [")
                .and_then(|(_, rest)| rest.split_once("] "))
            else {
                continue;
            };
            let client = client.split_once(' ').map_or(client, |(_, addr)| addr);
            if client == "lua" || client == self.skip {
                continue;
            }
            let mut words = command
                .split('"')
                .skip(1)
                .step_by(2)
                .map(str::to_ascii_lowercase);
            let mut name = words.next().unwrap_or_default();
            if matches!(
                name.as_str(),
                "script" | "client" | "config" | "cluster" | "pubsub"
            ) {
                name = format!("{name}|{}", words.next().unwrap_or_default());
            }
            *counts.entry(name).or_default() += 1;
        }
    }
}

/// A connection of the test's own to the server at `url`, with timeouts so that a stuck server
/// fails the test instead of hanging it.
pub fn connect(url: &str) -> redis::Connection {
    let client = redis::Client::open(url).expect("the server's URL");
    let conn = client
        .get_connection_with_timeout(Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect to the test's redis-server at {url}: {e}"));
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("set a read timeout");
    conn
}

/// Starts `command` (a `redis-server` command line; `binary` names it in messages) and waits
/// until `answers` holds. `None` when the server could not bind its port (another process took
/// it: pick another and try again). Panics with the server's log when it exits for another
/// reason or does not answer within the start-up time.
pub fn spawn_and_wait(
    command: &mut Command,
    binary: &str,
    log: impl Fn() -> String,
    answers: impl Fn() -> bool,
) -> Option<Child> {
    let mut child = match command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(child) => child,
        Err(e) if e.kind() == ErrorKind::NotFound => panic!("{INSTALL} (`{binary}`: {e})"),
        Err(e) => panic!("cannot start `{binary}`: {e}"),
    };
    let deadline = Instant::now() + STARTUP;
    loop {
        if let Some(status) = child.try_wait().ok().flatten() {
            if log().contains("Address already in use") {
                return None;
            }
            panic!("redis-server exited at start-up ({status}):\n{}", log());
        }
        if answers() {
            return Some(child);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "redis-server did not answer PING within {STARTUP:?}:\n{}",
                log()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A port nothing listens on at the moment: the kernel's choice for a loopback bind.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("bind 127.0.0.1:0")
}
