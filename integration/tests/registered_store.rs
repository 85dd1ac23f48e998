//! A store defined outside idem, registered under a scheme of its own, is chosen by
//! `IDEM_STORE` like a built-in one: `Config::from_lookup` accepts the scheme once it is
//! registered, `idem::init` connects it through the registered constructor with the `Config`,
//! and calls run on it. `idem::init` runs once per process: this binary holds the one test that
//! calls it.

use std::sync::OnceLock;

use idem::store::registry::{ConnectFuture, register_scheme};
use idem::testing::{Forwarding, Op};
use idem::{Call, Config, Error, Idem, MemoryStore, Status, StoreHandle, idempotent};

/// The store the constructor built, for the test to count its operations.
static BUILT: OnceLock<Forwarding> = OnceLock::new();

/// The constructor of `counted://…`: a memory store built from the `Config`, behind a
/// `Forwarding` store that counts every operation.
fn counted(config: &Config) -> ConnectFuture<'_> {
    Box::pin(async move {
        let store = Forwarding::new(MemoryStore::connect(config).await?);
        BUILT.set(store.clone()).expect("connected once");
        Ok(StoreHandle::new(store))
    })
}

#[idempotent(key = id, scope = "registered")]
async fn charge(id: u32) -> u32 {
    id * 2
}

#[tokio::test]
async fn a_registered_scheme_is_chosen_by_idem_store_and_calls_run_on_its_store() {
    let lookup = |name: &str| match name {
        "IDEM_STORE" => Some("counted://x".to_owned()),
        "IDEM_PREFIX" => Some("shop".to_owned()),
        _ => None,
    };
    // Unknown until registered, with the message that says how to register it.
    let Err(Error::Config(message)) = Config::from_lookup(lookup) else {
        panic!("an unregistered scheme is a configuration error");
    };
    for expected in [
        "IDEM_STORE=`counted://x` is not valid",
        "postgres://user:password@host:5432/db",
        "a scheme registered with idem::store::registry::register_scheme",
    ] {
        assert!(message.contains(expected), "{message}");
    }

    register_scheme("counted", counted).expect("a scheme of its own");
    let config = Config::from_lookup(lookup).expect("a registered scheme is accepted");
    assert_eq!(config.store, "counted://x");
    idem::init(config)
        .await
        .expect("init connects the registered store");
    let store = BUILT.get().expect("init ran the registered constructor");
    let installed = Idem::current().unwrap();
    assert!(installed.store().downcast_ref::<Forwarding>().is_some());

    assert_eq!(charge(21).await.unwrap(), 42);
    assert_eq!(charge(21).await.unwrap(), 42);
    let replay = Call::new("registered", 21).run(async { 0 }).await.unwrap();
    assert_eq!((replay.value, replay.status), (42, Status::Replayed));
    // Every call went through the registered store, under the configured prefix.
    assert_eq!(store.calls(Op::Claim), 3);
    assert_eq!(store.calls(Op::Complete), 1);
    assert_eq!(store.keys(Op::Claim), ["shop:registered:21"; 3]);

    // A scheme names one store: neither it nor a built-in one can be registered again.
    for scheme in ["counted", "memory", "redis"] {
        assert!(
            matches!(register_scheme(scheme, counted), Err(Error::Config(_))),
            "{scheme}"
        );
    }
}
