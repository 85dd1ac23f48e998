//! A Redis that can evict records (`maxmemory` with a policy other than `noeviction`) is
//! refused at connect, on one server and on every Cluster master, unless the user accepts it;
//! then one warning says so.

mod support;

use std::fmt::Write;
use std::sync::{Arc, Mutex};

use idem::{Call, Config, Error, Idem, RedisStore, Status};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

use support::cluster::RedisCluster;
use support::redis::RedisServer;

/// The text of every warning logged while it is the subscriber.
#[derive(Default, Clone)]
struct Warnings(Arc<Mutex<Vec<String>>>);

struct Text<'a>(&'a mut String);

impl Visit for Text<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, "{}={value:?} ", field.name());
    }
}

impl<S: Subscriber> Layer<S> for Warnings {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        if *event.metadata().level() == Level::WARN {
            let mut text = String::new();
            event.record(&mut Text(&mut text));
            self.0.lock().unwrap().push(text);
        }
    }
}

impl Warnings {
    /// The warnings about `maxmemory` since the last look (not, say, the one-time warning
    /// that calls without `idem::init` make).
    fn taken(&self) -> Vec<String> {
        let all = std::mem::take(&mut *self.0.lock().unwrap());
        all.into_iter()
            .filter(|text| text.contains("maxmemory"))
            .collect()
    }
}

/// Runs `test` on a current-thread runtime with `warnings` as the tracing subscriber.
fn with_warnings<T>(warnings: &Warnings, test: impl std::future::Future<Output = T>) -> T {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let subscriber = tracing_subscriber::registry().with(warnings.clone());
    tracing::subscriber::with_default(subscriber, || runtime.block_on(test))
}

fn refusal(result: Result<impl std::fmt::Debug, Error>) -> String {
    match result {
        Err(Error::Config(message)) => message,
        other => panic!("expected Error::Config, got {other:?}"),
    }
}

#[test]
fn a_server_that_can_evict_is_refused_unless_the_user_accepts_it() {
    let server =
        RedisServer::with_args(&["--maxmemory", "2mb", "--maxmemory-policy", "allkeys-lru"]);
    let warnings = Warnings::default();
    with_warnings(&warnings, async {
        let config = Config::default().store(server.url());
        let message = refusal(RedisStore::connect(&config).await);
        for named in [
            "maxmemory-policy allkeys-lru",
            "maxmemory 2097152",
            "noeviction",
            "allow_eviction(true)",
            "IDEM_ALLOW_EVICTION=1",
        ] {
            assert!(message.contains(named), "`{named}` not in: {message}");
        }
        // The same through the environment, as `idem::init` reads it.
        let url = server.url();
        let from_env = Config::from_lookup(|name| (name == "IDEM_STORE").then(|| url.clone()));
        let message = refusal(Idem::connect(&from_env.unwrap()).await);
        assert!(message.contains("allkeys-lru"), "{message}");
        assert!(
            warnings.taken().is_empty(),
            "a refusal is an error, not a warning"
        );

        // Accepted in code: one warning, then calls work as anywhere else.
        let store = RedisStore::connect(&config.clone().allow_eviction(true))
            .await
            .expect("allow_eviction accepts the server");
        let logged = warnings.taken();
        assert_eq!(logged.len(), 1, "one warning: {logged:?}");
        assert!(
            logged[0].contains("allkeys-lru") && logged[0].contains("allow_eviction"),
            "{logged:?}"
        );
        for (value, status) in [(1, Status::Executed), (1, Status::Replayed)] {
            let outcome = Call::new("evict", "k")
                .store(store.clone())
                .run(async { 1 })
                .await
                .unwrap();
            assert_eq!((outcome.value, outcome.status), (value, status));
        }
        let later = warnings.taken();
        assert!(later.is_empty(), "warned once, at connect: {later:?}");

        // Accepted through the environment.
        let url = server.url();
        let accepted = Config::from_lookup(|name| match name {
            "IDEM_STORE" => Some(url.clone()),
            "IDEM_ALLOW_EVICTION" => Some("1".to_owned()),
            _ => None,
        })
        .unwrap();
        Idem::connect(&accepted)
            .await
            .expect("IDEM_ALLOW_EVICTION=1 accepts the server");
        assert_eq!(warnings.taken().len(), 1);
    });
}

#[test]
fn only_a_limit_with_an_evicting_policy_is_refused() {
    let server =
        RedisServer::with_args(&["--maxmemory", "2mb", "--maxmemory-policy", "noeviction"]);
    let warnings = Warnings::default();
    with_warnings(&warnings, async {
        let config = Config::default().store(server.url());
        // A limit without eviction: a full server refuses writes, it never drops a record.
        RedisStore::connect(&config)
            .await
            .expect("noeviction is accepted");

        // volatile-* policies evict idem's records too: every record has an expiry.
        let _: () = server.cmd(&["CONFIG", "SET", "maxmemory-policy", "volatile-ttl"]);
        let message = refusal(RedisStore::connect(&config).await);
        assert!(
            message.contains("maxmemory-policy volatile-ttl"),
            "{message}"
        );

        // No limit: nothing is evicted, whatever the policy.
        let _: () = server.cmd(&["CONFIG", "SET", "maxmemory", "0"]);
        RedisStore::connect(&config)
            .await
            .expect("maxmemory 0 is accepted");
        assert!(warnings.taken().is_empty());
    });
}

#[test]
fn every_cluster_master_is_checked() {
    let cluster = RedisCluster::start(3, 0);
    let masters = cluster.masters();
    let evicting = masters[1];
    // Above what a node of the test's cluster holds: a limit it has not reached yet.
    let _: () = evicting.cmd(&["CONFIG", "SET", "maxmemory", "256mb"]);
    let _: () = evicting.cmd(&["CONFIG", "SET", "maxmemory-policy", "allkeys-lru"]);
    let warnings = Warnings::default();
    with_warnings(&warnings, async {
        let config = Config::default().store(cluster.url());
        let message = refusal(RedisStore::connect(&config).await);
        let node = format!("(node 127.0.0.1:{})", evicting.port());
        assert!(
            message.contains(&node) && message.contains("maxmemory-policy allkeys-lru"),
            "{message}"
        );
        assert_eq!(
            message.matches("(node ").count(),
            1,
            "only the evicting master is named: {message}"
        );

        let store = RedisStore::connect(&config.allow_eviction(true))
            .await
            .expect("allow_eviction accepts the cluster");
        let logged = warnings.taken();
        assert_eq!(logged.len(), 1, "one warning for the cluster: {logged:?}");
        assert!(logged[0].contains(&node), "{logged:?}");
        // A key on the evicting master runs once and replays.
        let key = cluster.key_on(evicting, "evict", "k");
        for status in [Status::Executed, Status::Replayed] {
            let outcome = Call::new("evict", key.clone())
                .store(store.clone())
                .run(async { 7 })
                .await
                .unwrap();
            assert_eq!((outcome.value, outcome.status), (7, status));
        }
    });
}
