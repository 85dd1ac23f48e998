//! With nothing installed, a call is refused with the ways to install a store, never served by a
//! store of this process alone; a call or scope that names its store still runs. No test of this
//! binary calls `idem::init` or `idem::install`.

use idem::{Call, Config, Error, Idem, MemoryStore, idempotent};

#[idempotent(key = id)]
async fn charge(id: u32) -> u32 {
    id * 2
}

#[tokio::test]
async fn a_call_with_nothing_installed_is_refused_and_names_init_and_install() {
    let error = charge(7).await.unwrap_err();
    let Error::Config(message) = &error else {
        panic!("expected a configuration error, got {error:?}");
    };
    for named in ["idem::init", "idem::install", "Idem::scope"] {
        assert!(message.contains(named), "{message}");
    }
    // Refused every time: nothing was kept anywhere by the first call.
    assert!(matches!(charge(7).await, Err(Error::Config(_))));
    assert!(matches!(Idem::current(), Err(Error::Config(_))));
    assert!(matches!(
        idem::inspect("s", "k").await,
        Err(Error::Config(_))
    ));
    assert!(matches!(
        idem::forget("s", "k").await,
        Err(Error::Config(_))
    ));
    assert!(matches!(idem::stats(10).await, Err(Error::Config(_))));
}

#[tokio::test]
async fn a_call_that_names_its_store_runs_with_the_default_settings() {
    let store = MemoryStore::new();
    let first = Call::new("named", "k")
        .store(store.clone())
        .run(async { 1 })
        .await
        .expect("a call on its own store");
    let again = Call::new("named", "k")
        .store(store.clone())
        .run(async { 2 })
        .await
        .expect("a replay");
    assert_eq!((first.value, again.value), (1, 1));
    // The default prefix: the record is where a configured default idem would keep it.
    let idem = Idem::with_settings(store.clone(), &Config::default());
    assert!(matches!(
        idem.scope(idem::inspect("named", "k")).await,
        Ok(idem::Inspection::Completed { .. })
    ));
    let scoped = idem::with_store(store, charge(3))
        .await
        .expect("with_store");
    assert_eq!(scoped, 6);
}
