//! `MySqlStore` on the MariaDB server of the test process, for what the conformance suite does
//! not reach: what `IDEM_STORE=mysql://…` opens, the errors of a wrong URL or a missing table,
//! keys MySQL's collations would fold together, and the reaper.

mod support;

use std::time::Duration;

use idem::store::{Claim, Record};
use idem::{Config, Error, Idem, MySqlOptions, MySqlStore, Store};
use support::mariadb::MariaDb;
use tokio::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idem_store_mysql_and_mariadb_open_the_url_with_the_settings_that_apply() {
    let url = MariaDb::shared().database("store_config");
    for url in [url.clone(), url.replacen("mysql://", "mariadb://", 1)] {
        let config = Config::default()
            .store(url.clone())
            .pool_size(3)
            .connect_timeout(Duration::from_secs(3));
        config.validate().expect("a built-in scheme");
        let idem = Idem::connect(&config).await.unwrap();
        let store = idem.store().downcast_ref::<MySqlStore>().unwrap();
        assert_eq!(store.pool().options().get_max_connections(), 3);
        let port = MariaDb::shared().port();
        assert!(
            store
                .describe()
                .starts_with(&format!("mysql://idem@127.0.0.1:{port}/store_config_")),
            "{}",
            store.describe()
        );
        assert!(store.describe().ends_with("(`idem_records`)"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_database_or_user_is_a_configuration_error() {
    let server = MariaDb::shared();
    for url in [
        server.url("no_such_database"),
        format!("mysql://nobody@127.0.0.1:{}/idem", server.port()),
    ] {
        let error = MySqlStore::open(&url).await.unwrap_err();
        let Error::Config(message) = &error else {
            panic!("{url}: expected a configuration error, got {error:?}");
        };
        assert!(message.contains("refused the connection"), "{message}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_table_not_to_be_created_names_the_sql() {
    let url = MariaDb::shared().database("store_no_table");
    let options = MySqlOptions::default().table("keys").create_table(false);
    let error = MySqlStore::connect_with(&url, options.clone())
        .await
        .unwrap_err();
    let Error::Config(message) = &error else {
        panic!("expected a configuration error, got {error:?}");
    };
    assert!(message.contains(&options.migration().unwrap()), "{message}");
    // Created, it is found.
    MySqlStore::connect_with(&url, options.create_table(true))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_a_collation_would_fold_together_are_distinct() {
    let url = MariaDb::shared().database("store_keys");
    let store = MySqlStore::open(&url).await.unwrap();
    let lease = Duration::from_secs(10);
    // Case, trailing spaces, accents, a NUL: one key each, byte for byte.
    for key in ["k:a", "k:A", "k:a ", "k:á", "k:a\0"] {
        let claim = Claim::new(None);
        assert_eq!(
            store.claim(key, &claim, lease).await.unwrap(),
            None,
            "{key:?} is a key of its own"
        );
        assert_eq!(
            store.claim(key, &Claim::new(None), lease).await.unwrap(),
            Some(Record::InProgress(claim)),
            "{key:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reaper_deletes_expired_rows_in_batches() {
    let url = MariaDb::shared().database("store_reaper");
    let options = MySqlOptions::default()
        .reaper_interval(Some(Duration::from_millis(100)))
        .reaper_batch(2);
    let store = MySqlStore::connect_with(&url, options).await.unwrap();
    for n in 0..5 {
        let key = format!("idem:reap:{n}");
        store
            .claim(&key, &Claim::new(None), Duration::from_millis(1))
            .await
            .unwrap();
    }
    let live = Claim::new(None);
    store
        .claim("idem:reap:live", &live, Duration::from_secs(60))
        .await
        .unwrap();
    // The reaper has no event to wait on: look until it is done, for 10 s at most.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM idem_records")
            .fetch_one(store.pool())
            .await
            .unwrap();
        if rows == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "{rows} rows left after 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        store
            .claim("idem:reap:live", &Claim::new(None), Duration::from_secs(1))
            .await
            .unwrap(),
        Some(Record::InProgress(live)),
        "the live row stays"
    );
}

/// While first calls clearly outnumber the rest, a claim inserts before it reads: a first
/// call is then 2 statements instead of 3, and every outcome of a claim is the same as when it
/// reads first (a replay, a holder's claim, an expired claim taken over). Counted from the
/// server's general log, on a store of one connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_of_mostly_first_calls_inserts_before_it_reads() {
    let server = MariaDb::shared();
    let url = server.database("store_order");
    let options = MySqlOptions::default().pool_size(1).reaper_interval(None);
    let store = MySqlStore::connect_with(&url, options).await.unwrap();
    let id: u64 = sqlx::query_scalar("SELECT CONNECTION_ID()")
        .fetch_one(store.pool())
        .await
        .unwrap();
    let idem = Idem::with_settings(store.clone(), &Config::default());
    let call = |order: u64| {
        idem.scope(idem::Call::new("shop::order", order).run(async move { order * 10 }))
    };
    let counted = async |order: u64| {
        let from = server.statements(id).len();
        let outcome = call(order).await.unwrap();
        assert_eq!(outcome.value, order * 10);
        (outcome.status, server.statements(id)[from..].to_vec())
    };

    // A new store reads first: the read, the insert, the completion.
    let (status, first) = counted(1).await;
    assert_eq!(status, idem::Status::Executed);
    assert_eq!(first.len(), 3, "{first:#?}");
    assert!(first[0].starts_with("SELECT"), "{first:#?}");
    for order in 2..=40 {
        call(order).await.unwrap();
    }
    // After 40 first calls: the insert, the completion.
    let (status, first) = counted(41).await;
    assert_eq!(status, idem::Status::Executed);
    assert_eq!(first.len(), 2, "{first:#?}");
    assert!(first[0].contains("INSERT INTO"), "{first:#?}");
    assert!(first[1].starts_with("UPDATE"), "{first:#?}");

    // A replay: the insert that meets the row, the read.
    let (status, replay) = counted(7).await;
    assert_eq!(status, idem::Status::Replayed);
    assert_eq!(replay.len(), 2, "{replay:#?}");
    assert!(replay[0].contains("INSERT INTO"), "{replay:#?}");
    assert!(replay[1].starts_with("SELECT"), "{replay:#?}");

    // A key held by a claim is reported held, with its holder; an expired claim is taken over.
    support::calls::a_claim_reports_the_holder_and_takes_over_an_expired_claim(
        &store,
        "idem:order",
    )
    .await;
}
