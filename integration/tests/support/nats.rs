//! A `nats-server` with JetStream of the test's own: started with `-js` on a free loopback port
//! (never a standard NATS port), its JetStream store in a temporary directory; stopped and
//! removed (and its log printed if the test failed) when dropped.
//!
//! The tests never touch a server they did not start: every address here is `127.0.0.1` and a
//! port this harness chose.

use std::io::{BufRead, BufReader, ErrorKind};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How long a started server may take to greet a client with JetStream on.
const STARTUP: Duration = Duration::from_secs(10);

/// Client, cluster, monitoring and leaf-node ports of NATS, never chosen.
const STANDARD_PORTS: &[u16] = &[4222, 6222, 8222, 7422];

const INSTALL: &str = "nats-server is needed by the JetStream tests and was not found on PATH \
or in /usr/sbin. Install it with `sudo apt-get install nats-server` (Debian/Ubuntu) or \
`brew install nats-server` (macOS), or point IDEM_NATS_SERVER at the binary";

static SERVERS: AtomicUsize = AtomicUsize::new(0);

/// A running `nats-server -js` owned by the test.
pub struct NatsServer {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl NatsServer {
    /// Starts a server with JetStream on, no authentication, listening on 127.0.0.1 only.
    pub fn start() -> NatsServer {
        let n = SERVERS.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("idem-nats-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the server's temporary directory");
        let mut server = NatsServer {
            port: 0,
            dir,
            child: None,
        };
        // Another process may take the free port between the look and the bind: try others.
        for _ in 0..5 {
            server.port = free_port();
            if server.launch() {
                return server;
            }
        }
        panic!("nats-server could not bind a free port:\n{}", server.log());
    }

    /// Spawns the server on `self.port` and waits until it greets a client with JetStream
    /// on; false if the port was taken.
    fn launch(&mut self) -> bool {
        let binary = binary();
        let mut child = match Command::new(&binary)
            .arg("-js")
            .args(["-a", "127.0.0.1"])
            .args(["-p", &self.port.to_string()])
            .arg("-sd")
            .arg(self.dir.join("jetstream"))
            .arg("-l")
            .arg(self.log_path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(child) => child,
            Err(e) if e.kind() == ErrorKind::NotFound => panic!("{INSTALL} ({e})"),
            Err(e) => panic!("cannot start `{}`: {e}", binary.display()),
        };
        let deadline = Instant::now() + STARTUP;
        loop {
            if let Some(status) = child.try_wait().ok().flatten() {
                if self.log().contains("address already in use") {
                    return false;
                }
                panic!("nats-server exited at start-up ({status}):\n{}", self.log());
            }
            if self.greets() {
                self.child = Some(child);
                return true;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "nats-server did not greet a client within {STARTUP:?}:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the server sends its `INFO` line, with JetStream on, to a new connection.
    fn greets(&self) -> bool {
        let Ok(stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line).is_ok()
            && line.starts_with("INFO ")
            && line.contains("\"jetstream\":true")
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The port the server listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("nats.log")
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "---- nats-server log (port {}) ----\n{}---- end of log ----",
                self.port,
                self.log()
            );
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `IDEM_NATS_SERVER`, else `nats-server` on PATH, else `/usr/sbin/nats-server` (where the
/// Debian package puts it, off the PATH of ordinary users).
fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("IDEM_NATS_SERVER") {
        return PathBuf::from(path);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|dir| dir.join("nats-server"))
        .find(|candidate| candidate.exists())
        .unwrap_or_else(|| panic!("{INSTALL}"))
}

/// A loopback port nothing listens on at the moment, never a standard NATS port.
fn free_port() -> u16 {
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .map(|addr| addr.port())
            .expect("bind 127.0.0.1:0");
        if !STANDARD_PORTS.contains(&port) {
            return port;
        }
    }
}
