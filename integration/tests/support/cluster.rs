//! A Redis Cluster of the test's own: `redis-server --cluster-enabled yes` processes on free
//! loopback ports in temporary directories, joined with `redis-cli --cluster create`, stopped
//! (and their logs printed if the test failed) when dropped.
//!
//! The tests never touch a server they did not start: every address here is `127.0.0.1` and a
//! port this harness chose (the client port, the cluster bus port and, with TLS, the TLS port,
//! all picked free).

use std::collections::{BTreeMap, HashMap};
use std::io::ErrorKind;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use redis::{FromRedisValue, Value};

use super::redis::{Monitor, connect, free_port, make_certificates, spawn_and_wait};

/// How long the cluster may take to agree on its slots after a change.
const CONVERGE: Duration = Duration::from_secs(30);
/// Slots of a Redis Cluster.
pub const SLOTS: u16 = 16384;

const INSTALL: &str = "redis-server and redis-cli (Redis 7.0 or later) are needed by the Redis \
Cluster tests and were not found on PATH. Install them with `sudo apt-get install redis-server` \
(Debian/Ubuntu), `brew install redis` (macOS) or `dnf install redis` (Fedora), or point \
IDEM_REDIS_SERVER and IDEM_REDIS_CLI at the binaries";

static NODES: AtomicUsize = AtomicUsize::new(0);

/// A running Redis Cluster owned by the test.
pub struct RedisCluster {
    nodes: Vec<Node>,
    dir: PathBuf,
    masters: usize,
}

/// One `redis-server` of a [`RedisCluster`].
pub struct Node {
    port: u16,
    bus_port: u16,
    /// The TLS port, and the directory of the certificates, when the cluster speaks TLS.
    tls: Option<(u16, PathBuf)>,
    dir: PathBuf,
    child: Option<Child>,
    /// The harness's own connection and its client address, which [`Monitor`] leaves out.
    control: Mutex<Option<(redis::Connection, String)>>,
}

impl RedisCluster {
    /// Starts `masters` masters, each with `replicas` replicas, and waits until every node
    /// reports `cluster_state:ok`, all slots are covered and the nodes agree on who owns them,
    /// and every replica is in sync with its master.
    pub fn start(masters: usize, replicas: usize) -> RedisCluster {
        RedisCluster::launch(masters, replicas, false)
    }

    /// Starts `masters` masters that also listen with TLS, and talk TLS to each other on the
    /// cluster bus, with a certificate for `127.0.0.1` signed by a CA of their own
    /// ([`tls_ca`](RedisCluster::tls_ca)). Clients that connect with TLS are told the TLS
    /// ports of the nodes; the harness itself keeps using the plain ports.
    pub fn with_tls(masters: usize) -> RedisCluster {
        RedisCluster::launch(masters, 0, true)
    }

    fn launch(masters: usize, replicas: usize, tls: bool) -> RedisCluster {
        let started = Instant::now();
        let dir = std::env::temp_dir().join(format!(
            "idem-cluster-{}-{}",
            std::process::id(),
            NODES.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create the cluster's temporary directory");
        if tls {
            make_certificates(&dir);
        }
        let certificates = tls.then(|| dir.clone());
        let count = masters * (1 + replicas);
        let nodes = (0..count)
            .map(|i| Node::launch_new(dir.join(format!("node-{i}")), certificates.clone()))
            .collect();
        let cluster = RedisCluster {
            nodes,
            dir,
            masters,
        };
        let cli = std::env::var("IDEM_REDIS_CLI").unwrap_or_else(|_| "redis-cli".into());
        let addresses: Vec<String> = cluster
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let output = match Command::new(&cli)
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
        {
            Ok(output) => output,
            Err(e) if e.kind() == ErrorKind::NotFound => panic!("{INSTALL} (`{cli}`: {e})"),
            Err(e) => panic!("cannot run `{cli}`: {e}"),
        };
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        cluster.wait_until_settled();
        eprintln!(
            "cluster of {masters} masters and {} replicas ready in {:?} (ports {})",
            masters * replicas,
            started.elapsed(),
            addresses.join(" ")
        );
        cluster
    }

    /// `redis+cluster://127.0.0.1:<port>,…` of the first masters.
    pub fn url(&self) -> String {
        let seeds: Vec<String> = self.nodes[..self.masters]
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis+cluster://{}", seeds.join(","))
    }

    /// `rediss+cluster://127.0.0.1:<tls port>,…` of the first masters of a cluster started
    /// [`with_tls`](RedisCluster::with_tls).
    pub fn tls_url(&self) -> String {
        let seeds: Vec<String> = self.nodes[..self.masters]
            .iter()
            .map(|n| {
                let (port, _) = n.tls.as_ref().expect("the cluster was started with_tls");
                format!("127.0.0.1:{port}")
            })
            .collect();
        format!("rediss+cluster://{}", seeds.join(","))
    }

    /// The CA certificate (PEM) that signed the TLS certificate of the nodes.
    pub fn tls_ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// Every node, in start order (masters first, as `redis-cli --cluster create` made them).
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// The running nodes that are masters now.
    pub fn masters(&self) -> Vec<&Node> {
        self.nodes
            .iter()
            .filter(|n| n.is_running() && n.role() == "master")
            .collect()
    }

    /// The node listening on `port`.
    pub fn node(&self, port: u16) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.port == port)
            .unwrap_or_else(|| panic!("no node of this cluster listens on {port}"))
    }

    /// Kills the node on `port` at once (SIGKILL), as a crash would; its data is gone.
    pub fn kill(&mut self, port: u16) {
        self.nodes
            .iter_mut()
            .find(|n| n.port == port)
            .unwrap_or_else(|| panic!("no node of this cluster listens on {port}"))
            .stop();
    }

    /// A user key (of `scope`, with the default prefix `idem`) whose record lives on the
    /// master `master`: `<stem>-<n>` for the first `n` that hashes to one of its slots.
    pub fn key_on(&self, master: &Node, scope: &str, stem: &str) -> String {
        let view = self.any().view();
        (0..)
            .map(|n| format!("{stem}-{n}"))
            .find(|key| {
                let slot = self.slot_of(&format!("idem:{scope}:{key}"));
                view.owners.get(&slot) == Some(&master.port)
            })
            .expect("some key hashes to every master")
    }

    /// A running node to ask about the cluster.
    fn any(&self) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.is_running())
            .expect("a running node")
    }

    /// The slot of `key` (`CLUSTER KEYSLOT`).
    pub fn slot_of(&self, key: &str) -> u16 {
        self.any().cmd(&["CLUSTER", "KEYSLOT", key])
    }

    /// The master that serves `slot`, as a running node sees it.
    pub fn owner_of(&self, slot: u16) -> &Node {
        let view = self.any().view();
        let port = view
            .owners
            .get(&slot)
            .unwrap_or_else(|| panic!("no master serves slot {slot}"));
        self.node(*port)
    }

    /// The master that serves `key`.
    pub fn owner_of_key(&self, key: &str) -> &Node {
        self.owner_of(self.slot_of(key))
    }

    /// The replica of `master`.
    pub fn replica_of(&self, master: &Node) -> &Node {
        let id = master.id();
        let view = self.any().view();
        let port = view
            .replicas
            .iter()
            .find(|(_, of)| **of == id)
            .map(|(port, _)| *port)
            .unwrap_or_else(|| panic!("the master on {} has no replica", master.port));
        self.node(port)
    }

    /// Moves `slot` from its master to `to` the way `redis-cli --cluster reshard` does:
    /// `SETSLOT … IMPORTING` on the target, `SETSLOT … MIGRATING` on the source, `MIGRATE` the
    /// keys `batch` at a time, then `SETSLOT … NODE` on the target, the source and the other
    /// masters. `between` runs after every step, so that the caller can let traffic happen in
    /// each state of the migration. Returns how many keys were moved.
    pub fn move_slot(
        &self,
        slot: u16,
        to: &Node,
        batch: usize,
        mut between: impl FnMut(),
    ) -> usize {
        let from = self.owner_of(slot);
        assert_ne!(from.port, to.port, "slot {slot} is already on {}", to.port);
        let (from_id, to_id) = (from.id(), to.id());
        let slot_text = slot.to_string();
        let _: () = to.cmd(&["CLUSTER", "SETSLOT", &slot_text, "IMPORTING", &from_id]);
        between();
        let _: () = from.cmd(&["CLUSTER", "SETSLOT", &slot_text, "MIGRATING", &to_id]);
        between();
        let mut moved = 0;
        loop {
            let keys: Vec<String> =
                from.cmd(&["CLUSTER", "GETKEYSINSLOT", &slot_text, &batch.to_string()]);
            if keys.is_empty() {
                break;
            }
            let port = to.port.to_string();
            let mut args = vec!["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS"];
            args.extend(keys.iter().map(String::as_str));
            let _: Value = from.cmd(&args);
            moved += keys.len();
            between();
        }
        let _: () = to.cmd(&["CLUSTER", "SETSLOT", &slot_text, "NODE", &to_id]);
        let _: () = from.cmd(&["CLUSTER", "SETSLOT", &slot_text, "NODE", &to_id]);
        for other in self.masters() {
            if other.port != from.port && other.port != to.port {
                let _: () = other.cmd(&["CLUSTER", "SETSLOT", &slot_text, "NODE", &to_id]);
            }
        }
        self.wait_until_settled();
        moved
    }

    /// Waits until every running node reports `cluster_state:ok` with every slot served, the
    /// running nodes agree on the master of every slot, no slot is migrating, and every running
    /// replica is in sync with a running master.
    pub fn wait_until_settled(&self) {
        let deadline = Instant::now() + CONVERGE;
        while let Err(why) = self.settled() {
            assert!(
                Instant::now() < deadline,
                "the cluster did not settle within {CONVERGE:?}: {why}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        self.wait_for_replication();
    }

    /// Returns once every replica of every running master has acknowledged a write (a replica
    /// that just synced can take a moment before the stream flows): a key of the master's is
    /// set and deleted, then `WAIT`ed for.
    fn wait_for_replication(&self) {
        let view = self.any().view();
        for master in self.masters() {
            let id = master.id();
            let replicas = view.replicas.iter().filter(|(_, of)| **of == id).count();
            if replicas == 0 {
                continue;
            }
            let probe = format!(
                "idem:harness:{}",
                self.key_on(master, "harness", "replication-probe")
            );
            let _: () = master.cmd(&["SET", probe.as_str(), "1"]);
            let _: () = master.cmd(&["DEL", probe.as_str()]);
            let acked: usize = master.cmd(&["WAIT", &replicas.to_string(), "10000"]);
            assert_eq!(
                acked, replicas,
                "the replicas of {} did not acknowledge a write within 10 s",
                master.port
            );
        }
    }

    fn settled(&self) -> Result<(), String> {
        let running: Vec<&Node> = self.nodes.iter().filter(|n| n.is_running()).collect();
        let replicas: Vec<u16> = running
            .iter()
            .filter(|n| n.role() == "slave")
            .map(|n| n.port)
            .collect();
        // The first node's port and view, which every other node must share.
        let mut first: Option<(u16, BTreeMap<u16, u16>, Replicas)> = None;
        for node in &running {
            let info: String = node
                .try_cmd(&["CLUSTER", "INFO"])
                .map_err(|e| e.to_string())?;
            for wanted in ["cluster_state:ok", "cluster_slots_ok:16384"] {
                if !info.lines().any(|l| l.trim() == wanted) {
                    return Err(format!("node {} lacks {wanted}", node.port));
                }
            }
            let known = format!("cluster_known_nodes:{}", self.nodes.len());
            if !info.lines().any(|l| l.trim() == known) {
                return Err(format!("node {} does not know every node yet", node.port));
            }
            let mut view = node.view();
            view.replicas.sort();
            if let Some(port) = replicas
                .iter()
                .find(|port| !view.replicas.iter().any(|(p, _)| p == *port))
            {
                return Err(format!(
                    "node {} does not see {port} as a replica yet",
                    node.port
                ));
            }
            if view.open_slots {
                return Err(format!("node {} has a slot in migration", node.port));
            }
            let owners: BTreeMap<u16, u16> = view.owners.into_iter().collect();
            if owners.len() != usize::from(SLOTS) {
                let nodes: String = node.cmd(&["CLUSTER", "NODES"]);
                return Err(format!(
                    "node {} sees {} slots served:\n{nodes}",
                    node.port,
                    owners.len()
                ));
            }
            if owners.values().any(|port| !self.node(*port).is_running()) {
                return Err(format!(
                    "node {} sees a stopped master serve slots",
                    node.port
                ));
            }
            match &first {
                None => first = Some((node.port, owners, view.replicas)),
                Some((port, seen, _)) if *seen != owners => {
                    return Err(format!(
                        "nodes {port} and {} disagree on the masters of the slots",
                        node.port
                    ));
                }
                Some((port, _, replicas)) if *replicas != view.replicas => {
                    return Err(format!(
                        "nodes {port} and {} disagree on the replicas",
                        node.port
                    ));
                }
                Some(_) => {}
            }
            let replication: String = node.cmd(&["INFO", "replication"]);
            if node.role() == "slave" && !replication.contains("master_link_status:up") {
                return Err(format!("replica {} is not in sync", node.port));
            }
            // A master counts a replica for WAIT once it is online (its first ACK).
            let replica_line = |l: &&str| {
                l.strip_prefix("slave")
                    .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
            };
            if replication
                .lines()
                .filter(replica_line)
                .any(|l| !l.contains("state=online"))
            {
                return Err(format!("a replica of {} is not online yet", node.port));
            }
        }
        Ok(())
    }

    /// Makes the replica `replica` the master of its shard with `CLUSTER FAILOVER [mode]`
    /// (`""` for the coordinated failover, `FORCE`, `TAKEOVER`) and waits until the cluster
    /// settled with it as a master.
    pub fn fail_over_to(&self, replica: &Node, mode: &str) {
        let mut args = vec!["CLUSTER", "FAILOVER"];
        if !mode.is_empty() {
            args.push(mode);
        }
        let _: () = replica.cmd(&args);
        let deadline = Instant::now() + CONVERGE;
        while replica.role() != "master" {
            assert!(
                Instant::now() < deadline,
                "{} did not become a master within {CONVERGE:?} after CLUSTER FAILOVER {mode}",
                replica.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.wait_until_settled();
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        for node in &mut self.nodes {
            node.stop();
            if panicking {
                eprintln!(
                    "---- redis-server log (cluster node {}) ----\n{}---- end of log ----",
                    node.port,
                    node.log()
                );
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The replicas a node knows: (replica port, the id of its master).
type Replicas = Vec<(u16, String)>;

/// What a node knows of the slots: the master port of each served slot, the replicas and
/// whether a slot is being migrated.
struct View {
    owners: HashMap<u16, u16>,
    replicas: Replicas,
    open_slots: bool,
}

impl Node {
    fn launch_new(dir: PathBuf, certificates: Option<PathBuf>) -> Node {
        std::fs::create_dir_all(&dir).expect("create the node's temporary directory");
        let mut node = Node {
            port: 0,
            bus_port: 0,
            tls: certificates.map(|dir| (0, dir)),
            dir,
            child: None,
            control: Mutex::new(None),
        };
        // Another process may take a free port between the look and the bind: try others.
        for _ in 0..5 {
            node.port = free_port();
            node.bus_port = free_port();
            if let Some((port, _)) = &mut node.tls {
                *port = free_port();
            }
            if node.port != node.bus_port && node.launch() {
                return node;
            }
        }
        panic!("redis-server could not bind free ports:\n{}", node.log());
    }

    /// Spawns the node and waits until it answers; false if a port was taken.
    fn launch(&mut self) -> bool {
        let _ = std::fs::remove_file(self.dir.join("nodes.conf"));
        let binary = std::env::var("IDEM_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        let mut command = Command::new(&binary);
        if let Some((port, certificates)) = &self.tls {
            command
                .arg("--tls-port")
                .arg(port.to_string())
                .args(["--tls-cluster", "yes", "--tls-replication", "yes"])
                .arg("--tls-cert-file")
                .arg(certificates.join("server.pem"))
                .arg("--tls-key-file")
                .arg(certificates.join("server.key"))
                .arg("--tls-ca-cert-file")
                .arg(certificates.join("ca.pem"))
                .args(["--tls-auth-clients", "no"]);
        }
        command
            .arg("--port")
            .arg(self.port.to_string())
            .arg("--cluster-port")
            .arg(self.bus_port.to_string())
            .args(["--bind", "127.0.0.1"])
            .args(["--cluster-enabled", "yes"])
            .arg("--cluster-config-file")
            .arg(self.dir.join("nodes.conf"))
            .args(["--cluster-node-timeout", "3000"])
            // Failovers happen when a test asks for one, never on their own.
            .args(["--cluster-replica-no-failover", "yes"])
            // A stopped master leaves the other shards serving.
            .args(["--cluster-require-full-coverage", "no"])
            // A replica syncs at once instead of waiting 5 s for others to share the sync.
            .args(["--repl-diskless-sync-delay", "0"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(self.dir.join("redis.log"));
        match spawn_and_wait(
            &mut command,
            &binary,
            || self.log(),
            || self.try_cmd::<String>(&["PING"]).is_ok(),
        ) {
            Some(child) => {
                self.child = Some(child);
                true
            }
            None => false,
        }
    }

    /// The port the node listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>/0`: this node alone.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Whether the process runs (it was not killed).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The node's id in the cluster.
    pub fn id(&self) -> String {
        self.cmd(&["CLUSTER", "MYID"])
    }

    /// `master` or `slave`, from `ROLE`.
    pub fn role(&self) -> String {
        let role: Vec<Value> = self.cmd(&["ROLE"]);
        String::from_redis_value(role.into_iter().next().expect("ROLE answers")).expect("a role")
    }

    /// How many keys the node holds (`DBSIZE`).
    pub fn dbsize(&self) -> u64 {
        self.cmd(&["DBSIZE"])
    }

    /// Every key of the node (`KEYS *`: the test's own node holds a few).
    pub fn keys(&self) -> Vec<String> {
        self.cmd(&["KEYS", "*"])
    }

    /// Stops the process (SIGSTOP): connections stay open, nothing answers, nothing
    /// replicates to it.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Resumes a frozen process (SIGCONT).
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("the node runs").id();
        let status = Command::new("kill")
            .arg(signal)
            .arg(pid.to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} failed");
    }

    fn stop(&mut self) {
        *self.control.lock().unwrap_or_else(|p| p.into_inner()) = None;
        if let Some(mut child) = self.child.take() {
            // A frozen process does not die of SIGKILL until it is resumed on some systems.
            let _ = Command::new("kill")
                .arg("-CONT")
                .arg(child.id().to_string())
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The node's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
    }

    /// A new connection of the test's own to the node.
    pub fn connection(&self) -> redis::Connection {
        connect(&self.url())
    }

    /// Runs one command on the harness's connection to this node, as
    /// `redis-cli -p <port> <args…>` would.
    pub fn cmd<T: FromRedisValue>(&self, args: &[&str]) -> T {
        self.try_cmd(args)
            .unwrap_or_else(|e| panic!("redis-cli -p {} {args:?} failed: {e}", self.port))
    }

    /// Like [`cmd`](Node::cmd), returning the error.
    pub fn try_cmd<T: FromRedisValue>(&self, args: &[&str]) -> redis::RedisResult<T> {
        let (name, rest) = args.split_first().expect("a command");
        let mut cmd = redis::cmd(name);
        cmd.arg(rest);
        let mut control = self.control.lock().unwrap_or_else(|p| p.into_inner());
        if control.is_none() {
            let client = redis::Client::open(self.url())?;
            let mut conn = client.get_connection_with_timeout(Duration::from_secs(2))?;
            conn.set_read_timeout(Some(Duration::from_secs(10)))?;
            let info: String = redis::cmd("CLIENT").arg("INFO").query(&mut conn)?;
            let addr = info
                .split_whitespace()
                .find_map(|field| field.strip_prefix("addr="))
                .expect("CLIENT INFO names the address")
                .to_owned();
            *control = Some((conn, addr));
        }
        let (conn, _) = control.as_mut().expect("connected above");
        let result = cmd.query(conn);
        if result.is_err() {
            *control = None;
        }
        result
    }

    /// One field of `INFO <section>`, such as `("stats", "total_net_input_bytes")`.
    pub fn info_field(&self, section: &str, field: &str) -> String {
        let info: String = self.cmd(&["INFO", section]);
        let prefix = format!("{field}:");
        info.lines()
            .find_map(|line| line.trim().strip_prefix(prefix.as_str()).map(str::to_owned))
            .unwrap_or_else(|| panic!("INFO {section} of {} has no {field}", self.port))
    }

    /// `INFO commandstats` as command → (calls, usec): commands run inside scripts count too.
    pub fn command_stats(&self) -> BTreeMap<String, (u64, u64)> {
        let info: String = self.cmd(&["INFO", "commandstats"]);
        info.lines()
            .filter_map(|line| {
                let (name, fields) = line.trim().strip_prefix("cmdstat_")?.split_once(':')?;
                let field = |key: &str| {
                    fields.split(',').find_map(|f| {
                        f.strip_prefix(key)
                            .and_then(|v| v.strip_prefix('='))
                            .and_then(|v| v.parse::<u64>().ok())
                    })
                };
                Some((name.to_owned(), (field("calls")?, field("usec")?)))
            })
            .collect()
    }

    fn view(&self) -> View {
        let nodes: String = self.cmd(&["CLUSTER", "NODES"]);
        let mut owners = HashMap::new();
        let mut replicas = Vec::new();
        let mut open_slots = false;
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 8 {
                continue;
            }
            let port: u16 = fields[1]
                .split('@')
                .next()
                .and_then(|addr| addr.rsplit(':').next())
                .and_then(|p| p.parse().ok())
                .expect("CLUSTER NODES names the address");
            let flags: Vec<&str> = fields[2].split(',').collect();
            // `fail` is a node the cluster agreed is down (`fail?` is only suspected).
            if flags.contains(&"fail") {
                continue;
            }
            if flags.contains(&"slave") {
                replicas.push((port, fields[3].to_owned()));
                continue;
            }
            for range in &fields[8..] {
                if range.starts_with('[') {
                    open_slots = true;
                    continue;
                }
                let (start, end) = match range.split_once('-') {
                    Some((a, b)) => (a.parse::<u16>(), b.parse::<u16>()),
                    None => (range.parse::<u16>(), range.parse::<u16>()),
                };
                let (Ok(start), Ok(end)) = (start, end) else {
                    continue;
                };
                for slot in start..=end {
                    owners.insert(slot, port);
                }
            }
        }
        View {
            owners,
            replicas,
            open_slots,
        }
    }

    /// Starts recording the commands clients send to this node (`MONITOR`), leaving out the
    /// harness's own and the ones scripts run inside the server.
    pub fn monitor(&self) -> Monitor<'_> {
        let _: String = self.cmd(&["PING"]);
        let skip = self
            .control
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .expect("connected")
            .1
            .clone();
        Monitor::start(self.connection(), skip, move |marker| {
            let _: String = self.cmd(&["ECHO", marker]);
        })
    }
}
