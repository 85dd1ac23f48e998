//! `RedisStore` on a real Redis Cluster while it changes under the calls: a slot holding live
//! records moves to another master, a replica takes over its master (coordinated, and forced
//! after the master was killed), and what `min_replicas` changes about what a failover loses.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use idem::{Call, Config, Error, RedisStore, Status, StoreErrorKind};
use tokio::task::JoinHandle;

use support::cluster::RedisCluster;
use support::redis::RedisServer;

/// How long a write waits for its replica where the test expects it to be acknowledged: long
/// enough for a replica starved of CPU on a busy test machine.
const ACKNOWLEDGED: Duration = Duration::from_secs(2);
/// How long a write waits for its replica where the test expects it not to be (the replica is
/// frozen): the time such a case takes.
const UNACKNOWLEDGED: Duration = Duration::from_millis(300);

/// A store on `cluster` with `min_replicas`, `replica_timeout`, and room for a cluster in
/// transition.
async fn store_on(
    cluster: &RedisCluster,
    min_replicas: usize,
    replica_timeout: Duration,
) -> RedisStore {
    let config = Config::default()
        .store(cluster.url())
        .command_timeout(Duration::from_secs(5))
        .min_replicas(min_replicas)
        .replica_timeout(replica_timeout);
    RedisStore::connect(&config)
        .await
        .expect("connect to the test's Redis Cluster")
}

/// Calls that run until stopped, from several tasks over the same keys, counting the
/// executions of each key's body and every error that reaches a caller.
struct Traffic {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicUsize>,
    executions: Arc<Mutex<HashMap<String, usize>>>,
    errors: Arc<Mutex<Vec<String>>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Traffic {
    /// `tasks` tasks each call every key in turn, from different starting points, so that
    /// first calls, replays and duplicates waiting for a running call all happen. A body runs
    /// for 10 ms and returns the key's index.
    fn start(
        store: &RedisStore,
        scope: &'static str,
        keys: &[String],
        executions: Arc<Mutex<HashMap<String, usize>>>,
        tasks: usize,
    ) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicUsize::new(0));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let keys = Arc::new(keys.to_vec());
        let tasks = (0..tasks)
            .map(|t| {
                let (store, keys, stop, done) =
                    (store.clone(), keys.clone(), stop.clone(), done.clone());
                let (executions, errors) = (executions.clone(), errors.clone());
                tokio::spawn(async move {
                    let mut i = t * 3;
                    while !stop.load(Ordering::Acquire) {
                        let index = i % keys.len();
                        let key = keys[index].clone();
                        i += 1;
                        let body = {
                            let (executions, key) = (executions.clone(), key.clone());
                            async move {
                                *executions.lock().unwrap().entry(key).or_default() += 1;
                                tokio::time::sleep(Duration::from_millis(10)).await;
                                index
                            }
                        };
                        match Call::new(scope, key.as_str())
                            .store(store.clone())
                            .run(body)
                            .await
                        {
                            Ok(outcome) if outcome.value == index => {
                                done.fetch_add(1, Ordering::AcqRel);
                            }
                            Ok(outcome) => errors.lock().unwrap().push(format!(
                                "{key}: got {} ({:?}) instead of {index}",
                                outcome.value, outcome.status
                            )),
                            Err(error) => errors.lock().unwrap().push(format!("{key}: {error}")),
                        }
                    }
                })
            })
            .collect();
        Traffic {
            stop,
            done,
            executions,
            errors,
            tasks,
        }
    }

    /// Blocks until `more` calls succeeded after this point (at most 30 s): used between the
    /// steps of a cluster change, so that calls run in every state of it.
    fn let_calls_run(&self, more: usize) {
        let target = self.done.load(Ordering::Acquire) + more;
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.done.load(Ordering::Acquire) < target {
            assert!(
                Instant::now() < deadline,
                "calls stalled: {} done, errors: {:?}",
                self.done.load(Ordering::Acquire),
                self.errors.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Stops the calls; returns how many succeeded and the errors callers saw.
    async fn stop(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Release);
        for task in self.tasks {
            task.await.expect("a traffic task panicked");
        }
        let errors = self.errors.lock().unwrap().clone();
        (self.done.load(Ordering::Acquire), errors)
    }

    fn executions(&self) -> Arc<Mutex<HashMap<String, usize>>> {
        self.executions.clone()
    }
}

fn assert_each_ran_once(executions: &Mutex<HashMap<String, usize>>, keys: &[String]) {
    let executions = executions.lock().unwrap();
    for key in keys {
        assert_eq!(
            executions.get(key).copied(),
            Some(1),
            "the body of {key} ran once"
        );
    }
}

async fn assert_replays(store: &RedisStore, scope: &'static str, keys: &[String]) {
    for (index, key) in keys.iter().enumerate() {
        let again = Call::new(scope, key.as_str())
            .store(store.clone())
            .run(async { usize::MAX })
            .await
            .unwrap();
        assert_eq!(
            (again.value, again.status),
            (index, Status::Replayed),
            "{key}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn moving_a_slot_with_live_records_while_calls_run_surfaces_no_error_and_runs_no_key_twice() {
    const SCOPE: &str = "migrate";
    let started = Instant::now();
    let cluster = RedisCluster::start(3, 0);
    // Two Cluster connections for six callers: each operation waits for a connection of its
    // own. (Shared by concurrent operations, a connection let another command take the
    // `ASKING` that redis-rs sends on its own before a redirected command, and calls failed
    // with `ASK` after their retries ran out.)
    let config = Config::default()
        .store(cluster.url())
        .command_timeout(Duration::from_secs(5))
        .pool_size(2);
    let store = RedisStore::connect(&config).await.unwrap();
    // One hash tag: every record of the test lives in the same slot.
    let keys: Vec<String> = (0..40).map(|i| format!("{{hot}}-{i}")).collect();
    let slot = cluster.slot_of(&format!("idem:{SCOPE}:{{hot}}"));
    let from = cluster.owner_of(slot).port();
    let to = cluster
        .masters()
        .into_iter()
        .find(|m| m.port() != from)
        .expect("another master")
        .port();

    // Half the keys hold completed records before the move; the others are first called
    // while it runs.
    let executions = Arc::new(Mutex::new(HashMap::new()));
    for (index, key) in keys.iter().enumerate().take(20) {
        *executions.lock().unwrap().entry(key.clone()).or_default() += 1;
        Call::new(SCOPE, key.as_str())
            .store(store.clone())
            .run(async move { index })
            .await
            .unwrap();
    }
    let _: () = cluster.node(to).cmd(&["CONFIG", "RESETSTAT"]);
    let traffic = Traffic::start(&store, SCOPE, &keys, executions, 6);
    traffic.let_calls_run(20);
    let moved = tokio::task::block_in_place(|| {
        cluster.move_slot(slot, cluster.node(to), 2, || traffic.let_calls_run(8))
    });
    traffic.let_calls_run(100);
    let executions = traffic.executions();
    let (calls, errors) = traffic.stop().await;

    assert!(errors.is_empty(), "errors reached callers: {errors:#?}");
    assert_each_ran_once(&executions, &keys);
    assert!(
        moved >= 20,
        "the move carried the live records ({moved} keys)"
    );
    assert_eq!(cluster.owner_of(slot).port(), to, "the slot moved");
    let asked = cluster
        .node(to)
        .command_stats()
        .get("asking")
        .map_or(0, |(calls, _)| *calls);
    assert!(
        asked > 0,
        "calls followed ASK redirections to the importing master"
    );
    let on = |port: u16| {
        cluster
            .node(port)
            .keys()
            .into_iter()
            .filter(|k| k.starts_with("idem:migrate:"))
            .count()
    };
    assert_eq!(
        (on(from), on(to)),
        (0, keys.len()),
        "every record is on the new master"
    );
    assert_replays(&store, SCOPE, &keys).await;
    eprintln!(
        "moved {moved} keys of slot {slot} from {from} to {to} under {calls} calls \
         ({asked} followed an ASK) in {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_coordinated_failover_while_calls_run_surfaces_no_error_and_calls_continue_on_the_new_master()
 {
    const SCOPE: &str = "failover";
    let started = Instant::now();
    let cluster = RedisCluster::start(3, 1);
    let store = store_on(&cluster, 0, ACKNOWLEDGED).await;
    let keys: Vec<String> = (0..60).map(|i| format!("order-{i}")).collect();
    let master = cluster.owner_of_key(&format!("idem:{SCOPE}:{}", keys[0]));
    let replica = cluster.replica_of(master);
    let (master, replica) = (master.port(), replica.port());
    let shard_keys: Vec<String> = keys
        .iter()
        .map(|k| format!("idem:{SCOPE}:{k}"))
        .filter(|k| cluster.owner_of_key(k).port() == master)
        .collect();
    assert!(!shard_keys.is_empty());

    let traffic = Traffic::start(&store, SCOPE, &keys, Arc::default(), 6);
    traffic.let_calls_run(60);
    tokio::task::block_in_place(|| {
        cluster.fail_over_to(cluster.node(replica), "");
        let _: () = cluster.node(replica).cmd(&["CONFIG", "RESETSTAT"]);
    });
    let switched = started.elapsed();
    traffic.let_calls_run(200);
    let executions = traffic.executions();
    let (calls, errors) = traffic.stop().await;

    assert!(errors.is_empty(), "errors reached callers: {errors:#?}");
    assert_each_ran_once(&executions, &keys);
    assert_eq!(cluster.node(replica).role(), "master");
    assert_eq!(cluster.node(master).role(), "slave");
    let stats = cluster.node(replica).command_stats();
    assert!(
        stats.get("set").is_some_and(|(calls, _)| *calls > 0),
        "calls reached the new master after the switch: {stats:?}"
    );
    let held = cluster.node(replica).keys();
    for key in &shard_keys {
        assert!(held.contains(key), "the new master holds {key}");
    }
    assert_replays(&store, SCOPE, &keys).await;
    eprintln!(
        "failover to {replica} at {switched:?}; {calls} calls, none failed, in {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn min_replicas_keeps_a_completed_result_through_a_forced_failover_that_loses_it_without() {
    const SCOPE: &str = "durability";
    let started = Instant::now();
    let mut cluster = RedisCluster::start(3, 1);
    let plain = store_on(&cluster, 0, ACKNOWLEDGED).await;
    let durable = store_on(&cluster, 1, ACKNOWLEDGED).await;
    let impatient = store_on(&cluster, 1, UNACKNOWLEDGED).await;
    let masters: Vec<u16> = cluster.masters().iter().map(|m| m.port()).collect();
    let replica =
        |cluster: &RedisCluster, master: u16| cluster.replica_of(cluster.node(master)).port();
    let ran = Arc::new(AtomicUsize::new(0));
    let body = |value: u32| {
        let ran = ran.clone();
        async move {
            ran.fetch_add(1, Ordering::AcqRel);
            value
        }
    };

    // Without min_replicas: the master acknowledges a result its replica never got, the
    // master dies, the replica takes over, and the key runs again. (The replica is frozen and
    // its link closed: a frozen process's socket would still take the stream into the
    // kernel's buffer, and the replica would read it once resumed.)
    let (m1, r1) = (masters[0], replica(&cluster, masters[0]));
    let lost = cluster.key_on(cluster.node(m1), SCOPE, "lost");
    cluster.node(r1).freeze();
    let cut: u64 = cluster.node(m1).cmd(&["CLIENT", "KILL", "TYPE", "replica"]);
    assert_eq!(cut, 1, "the master's one replica link was closed");
    let first = Call::new(SCOPE, lost.as_str())
        .store(plain.clone())
        .run(body(1))
        .await
        .unwrap();
    assert_eq!((first.value, first.status), (1, Status::Executed));
    cluster.kill(m1);
    cluster.node(r1).thaw();
    tokio::task::block_in_place(|| cluster.fail_over_to(cluster.node(r1), "TAKEOVER"));
    let again = Call::new(SCOPE, lost.as_str())
        .store(plain.clone())
        .run(body(2))
        .await
        .unwrap();
    assert_eq!(
        (again.value, again.status),
        (2, Status::Executed),
        "without min_replicas the acknowledged result was lost in the failover"
    );

    // With min_replicas = 1: while the replica cannot acknowledge, a claim is withdrawn and
    // the call fails before its body runs ...
    let (m2, r2) = (masters[1], replica(&cluster, masters[1]));
    let kept = cluster.key_on(cluster.node(m2), SCOPE, "kept");
    ran.store(0, Ordering::Release);
    cluster.node(r2).freeze();
    match Call::new(SCOPE, kept.as_str())
        .store(impatient.clone())
        .run(body(1))
        .await
    {
        Err(Error::Store { source, .. }) => {
            assert_eq!(source.kind(), StoreErrorKind::Unavailable, "{source}");
            assert!(source.to_string().contains("min_replicas"), "{source}");
        }
        other => panic!("expected Error::Store, got {other:?}"),
    }
    assert_eq!(ran.load(Ordering::Acquire), 0, "the body did not run");
    let stored = format!("idem:{SCOPE}:{kept}");
    let exists: u64 = cluster.node(m2).cmd(&["EXISTS", stored.as_str()]);
    assert_eq!(exists, 0, "the unreplicated claim was withdrawn");
    cluster.node(r2).thaw();
    tokio::task::block_in_place(|| cluster.wait_until_settled());

    // ... and a result it acknowledges survives the master's death and a forced failover.
    let first = Call::new(SCOPE, kept.as_str())
        .store(durable.clone())
        .run(body(1))
        .await
        .unwrap();
    assert_eq!((first.value, first.status), (1, Status::Executed));
    cluster.kill(m2);
    tokio::task::block_in_place(|| cluster.fail_over_to(cluster.node(r2), "TAKEOVER"));
    let again = Call::new(SCOPE, kept.as_str())
        .store(durable.clone())
        .run(body(2))
        .await
        .unwrap();
    assert_eq!(
        (again.value, again.status),
        (1, Status::Replayed),
        "with min_replicas the result survived the failover"
    );
    assert_eq!(ran.load(Ordering::Acquire), 1, "the body ran once");

    // A result the replica does not acknowledge (it froze while the body ran) is returned to
    // the caller and reported as not stored; the master has it all the same.
    let (m3, r3) = (masters[2], replica(&cluster, masters[2]));
    let unconfirmed = cluster.key_on(cluster.node(m3), SCOPE, "unconfirmed");
    // The claim must be acknowledged, the completion must not: 1 s each (four attempts).
    let brief = store_on(&cluster, 1, Duration::from_secs(1)).await;
    let outcome = Call::new(SCOPE, unconfirmed.as_str())
        .store(brief)
        .run(async {
            cluster.node(r3).freeze();
            7_u32
        })
        .await
        .unwrap();
    cluster.node(r3).thaw();
    assert_eq!((outcome.value, outcome.status), (7, Status::NotStored));
    let stored = format!("idem:{SCOPE}:{unconfirmed}");
    let record: Option<String> = cluster.node(m3).cmd(&["GET", stored.as_str()]);
    assert!(
        record.is_some_and(|r| r.contains('7')),
        "the master holds the result"
    );
    eprintln!("durability scenarios in {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_replicas_on_one_server_waits_for_its_replica_behind_each_write() {
    let master = RedisServer::start();
    let replica = RedisServer::start();
    // The replica syncs at once instead of waiting 5 s for others to share the sync.
    let _: () = master.cmd(&["CONFIG", "SET", "repl-diskless-sync-delay", "0"]);
    let _: () = replica.cmd(&["REPLICAOF", "127.0.0.1", &master.port().to_string()]);
    // Returns once the replica has acknowledged a write (or after 10 s without): a replica
    // that just synced can take a moment before the stream flows.
    let _: () = master.cmd(&["SET", "probe", "1"]);
    let _: () = master.cmd(&["DEL", "probe"]);
    let acked: u64 = master.cmd(&["WAIT", "1", "10000"]);
    assert_eq!(acked, 1, "the replica is in sync");
    let config = Config::default().store(master.url()).min_replicas(1);
    let store = RedisStore::connect(&config.clone().replica_timeout(ACKNOWLEDGED))
        .await
        .unwrap();
    let impatient = RedisStore::connect(&config.replica_timeout(UNACKNOWLEDGED))
        .await
        .unwrap();
    Call::new("replicated", "warm-up")
        .store(store.clone())
        .run(async { 0 })
        .await
        .unwrap();

    // WAIT follows the claim and the completion, pipelined with them; nothing else is sent.
    let monitor = master.monitor();
    let first = Call::new("replicated", "k")
        .store(store.clone())
        .run(async { 1 })
        .await
        .unwrap();
    assert_eq!(first.status, Status::Executed);
    let sent = monitor.stop();
    assert_eq!(
        sent.into_iter().collect::<Vec<_>>(),
        [
            ("evalsha".to_owned(), 1),
            ("set".to_owned(), 1),
            ("wait".to_owned(), 2)
        ]
    );
    let key = "idem:replicated:k";
    let on_replica: Option<String> = replica.cmd(&["GET", key]);
    assert!(
        on_replica.is_some_and(|r| r.contains("\"ok\":1")),
        "the replica has the result"
    );

    // A replica that cannot acknowledge: the claim is withdrawn, the body does not run.
    replica.freeze();
    let ran = Arc::new(AtomicBool::new(false));
    let outcome = Call::new("replicated", "frozen")
        .store(impatient)
        .run({
            let ran = ran.clone();
            async move { ran.store(true, Ordering::Release) }
        })
        .await;
    replica.thaw();
    match outcome {
        Err(Error::Store { source, .. }) => {
            assert_eq!(source.kind(), StoreErrorKind::Unavailable, "{source}");
            assert!(
                source.to_string().contains("0 of the 1 replicas"),
                "{source}"
            );
        }
        other => panic!("expected Error::Store, got {other:?}"),
    }
    assert!(!ran.load(Ordering::Acquire), "the body did not run");
    let left: u64 = master.cmd(&["EXISTS", "idem:replicated:frozen"]);
    assert_eq!(left, 0, "the claim was withdrawn");
}
