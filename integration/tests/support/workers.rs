//! Copies of the running test binary as worker processes, for the `harness = false` tests that
//! need more than one process: the test starts [`Workers`] with an environment that makes
//! `main` run the worker's part instead of the test, reads the lines they print, releases them
//! together ([`Workers::ready`], [`Workers::go`]), and collects what they printed and how they
//! exited with [`Workers::finish`]. Every wait is bounded: a stuck worker fails the test instead
//! of hanging it. Workers still running when [`Workers`] is dropped are killed.
//!
//! On the worker's side, [`index`] is its number and [`ready_then_wait_for_go`] the other half
//! of the start.

use std::cell::RefCell;
use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Set in each worker's environment to its number: 0, 1, …
pub const INDEX: &str = "IDEM_TEST_WORKER_INDEX";

/// What the threads that read the workers' stdout send.
enum Message {
    /// Worker `n` printed a line.
    Line(usize, String),
    /// The process with this id closed its stdout (it exited or was killed).
    Closed(u32),
}

/// Copies of the current test binary running as workers, numbered from 0.
pub struct Workers {
    env: Vec<(OsString, OsString)>,
    /// Whether the workers' stderr goes to the test's (else it is discarded).
    stderr: bool,
    children: Vec<Child>,
    sender: mpsc::Sender<Message>,
    messages: mpsc::Receiver<Message>,
    /// The processes whose stdout closed, as far as the messages read so far tell.
    closed: RefCell<HashSet<u32>>,
}

impl Workers {
    /// Starts `count` copies of this test binary with `env` (and [`INDEX`]); their stderr goes
    /// to the test's.
    pub fn start<K, V>(count: usize, env: impl IntoIterator<Item = (K, V)>) -> Workers
    where
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        Workers::launch(count, env, true)
    }

    /// Like [`start`](Workers::start), with the workers' stderr discarded: for workers killed
    /// in the middle of their work.
    pub fn start_quiet<K, V>(count: usize, env: impl IntoIterator<Item = (K, V)>) -> Workers
    where
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        Workers::launch(count, env, false)
    }

    fn launch<K, V>(count: usize, env: impl IntoIterator<Item = (K, V)>, stderr: bool) -> Workers
    where
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        let (sender, messages) = mpsc::channel();
        let mut workers = Workers {
            env: env
                .into_iter()
                .map(|(k, v)| (k.as_ref().to_owned(), v.as_ref().to_owned()))
                .collect(),
            stderr,
            children: Vec::new(),
            sender,
            messages,
            closed: RefCell::default(),
        };
        for n in 0..count {
            let child = workers.spawn(n);
            workers.children.push(child);
        }
        workers
    }

    /// Starts worker `n`, with a thread that sends its stdout's lines.
    fn spawn(&self, n: usize) -> Child {
        let exe = std::env::current_exe().expect("the test binary's path");
        let mut child = Command::new(exe)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env(INDEX, n.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(if self.stderr {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn()
            .unwrap_or_else(|e| panic!("start worker {n}: {e}"));
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let (sender, pid) = (self.sender.clone(), child.id());
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                let _ = sender.send(Message::Line(n, line));
            }
            let _ = sender.send(Message::Closed(pid));
        });
        child
    }

    /// The process id of worker `n` (of its latest start).
    pub fn pid(&self, n: usize) -> u32 {
        self.children[n].id()
    }

    /// The next line any worker prints, with the worker's number; `None` if none comes within
    /// `timeout`.
    pub fn line_within(&self, timeout: Duration) -> Option<(usize, String)> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.messages.recv_timeout(left) {
                Ok(Message::Line(n, line)) => return Some((n, line)),
                Ok(Message::Closed(pid)) => {
                    self.closed.borrow_mut().insert(pid);
                }
                Err(_) => return None,
            }
        }
    }

    /// The next line any worker prints, with the worker's number; fails the test if none comes
    /// within `timeout`.
    pub fn line(&self, timeout: Duration) -> (usize, String) {
        self.line_within(timeout)
            .unwrap_or_else(|| panic!("no worker printed a line within {timeout:?}"))
    }

    /// Waits until every worker has printed `ready` (its first line), each within `timeout`.
    pub fn ready(&self, timeout: Duration) {
        let mut ready = vec![false; self.children.len()];
        while ready.contains(&false) {
            let (n, line) = self.line(timeout);
            assert_eq!(line, "ready", "worker {n}");
            ready[n] = true;
        }
    }

    /// Tells every worker to go (a line on its stdin): they start at the same moment.
    pub fn go(&mut self) {
        for (n, child) in self.children.iter_mut().enumerate() {
            writeln!(child.stdin.as_mut().expect("piped stdin"), "go")
                .unwrap_or_else(|e| panic!("start worker {n}: {e}"));
        }
    }

    /// Sends worker `n` the signal `name` (`-STOP`, `-CONT`, …) with `kill`.
    pub fn signal(&self, n: usize, name: &str) {
        let sent = Command::new("kill")
            .args([name, &self.pid(n).to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill {name} worker {n}");
    }

    /// Kills worker `n` (SIGKILL) and starts it again, with the same environment; the lines
    /// it printed before stay in order with the others.
    pub fn restart(&mut self, n: usize) {
        self.signal(n, "-KILL");
        let _ = self.children[n].wait();
        self.children[n] = self.spawn(n);
    }

    /// Waits, for `timeout` in all, until every worker has closed its stdout and exited, and
    /// fails the test if one did not, or exited with a failure. Returns the lines each printed
    /// that were not read yet.
    pub fn finish(mut self, timeout: Duration) -> Vec<Vec<String>> {
        let deadline = Instant::now() + timeout;
        let mut lines = vec![Vec::new(); self.children.len()];
        let open = |closed: &HashSet<u32>| self.children.iter().any(|c| !closed.contains(&c.id()));
        while open(&self.closed.borrow()) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.messages.recv_timeout(left) {
                Ok(Message::Line(n, line)) => lines[n].push(line),
                Ok(Message::Closed(pid)) => {
                    self.closed.borrow_mut().insert(pid);
                }
                Err(_) => panic!("the workers did not finish within {timeout:?}"),
            }
        }
        for (n, child) in self.children.iter_mut().enumerate() {
            let status = loop {
                if let Some(status) = child.try_wait().expect("a worker's exit status") {
                    break status;
                }
                assert!(
                    Instant::now() < deadline,
                    "worker {n} did not exit within {timeout:?}"
                );
                std::thread::sleep(Duration::from_millis(10));
            };
            assert!(status.success(), "worker {n} failed: {status}");
        }
        self.children.clear();
        lines
    }
}

impl Drop for Workers {
    /// Kills the workers still running (a test that failed half-way).
    fn drop(&mut self) {
        for child in &mut self.children {
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// In a worker: its number, from [`INDEX`] (0 if it is not set).
pub fn index() -> usize {
    std::env::var(INDEX).map_or(0, |n| n.parse().expect("a worker number"))
}

/// In a worker: tells the test it is ready (`ready` on stdout), then waits until the test says
/// go ([`Workers::go`]).
pub fn ready_then_wait_for_go() {
    println!("ready");
    let mut go = String::new();
    std::io::stdin().read_line(&mut go).expect("wait for go");
}
