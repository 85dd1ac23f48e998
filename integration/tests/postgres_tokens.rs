//! Server-issued tokens on a PostgreSQL the test starts: one statement per issue and per
//! redemption, counted from the server's log, and the tokens' table.

mod support;

use std::time::Duration;

use idem::store::Redemption;
use idem::{Call, Config, Idem, PostgresOptions, PostgresStore, Status, tokens};
use support::postgres::PostgresServer;

/// The application name of the store whose statements the test counts.
const COUNTED: &str = "idem-counted";

/// The statements the store sent while `f` ran.
async fn sent_during<F: Future>(server: &PostgresServer, f: F) -> (F::Output, Vec<String>) {
    let before = server.statements(COUNTED).len();
    let out = f.await;
    let after = server.statements(COUNTED);
    (out, after[before..].to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuing_and_redeeming_are_one_statement_each() {
    let server = PostgresServer::start();
    let options = PostgresOptions::default()
        .application_name(COUNTED)
        .reaper_interval(None)
        .pool_size(1);
    let store = PostgresStore::connect_with(&server.url(), options)
        .await
        .unwrap();
    let idem = Idem::with_settings(store.clone(), &Config::default());
    let ttl = Duration::from_secs(600);
    // Prepares the statements on the store's one connection.
    for _ in 0..2 {
        let warm = idem.scope(tokens::issue("warm-up", ttl)).await.unwrap();
        idem.scope(tokens::issue_bounded("warm-up", ttl, 100))
            .await
            .unwrap();
        idem.scope(tokens::redeem("warm-up", &warm)).await.unwrap();
    }

    let (token, sent) = sent_during(&server, idem.scope(tokens::issue("forms", ttl))).await;
    let token = token.unwrap();
    assert_eq!(sent.len(), 1, "{sent:#?}");
    assert!(sent[0].starts_with("WITH swept AS"), "{sent:#?}");

    let (bounded, sent) =
        sent_during(&server, idem.scope(tokens::issue_bounded("forms", ttl, 3))).await;
    bounded.unwrap();
    assert_eq!(sent.len(), 1, "{sent:#?}");
    assert!(sent[0].contains("head AS"), "{sent:#?}");

    for expected in [Redemption::Valid, Redemption::Redeemed] {
        let (redeemed, sent) =
            sent_during(&server, idem.scope(tokens::redeem("forms", &token))).await;
        assert_eq!(redeemed.unwrap(), expected);
        assert_eq!(sent.len(), 1, "{sent:#?}");
        assert!(sent[0].starts_with("WITH seen AS"), "{sent:#?}");
    }
    let (forged, sent) = sent_during(
        &server,
        idem.scope(tokens::redeem("forms", "AAAAAAAAAAAAAAAAAAAAAA")),
    )
    .await;
    assert_eq!(forged.unwrap(), Redemption::Unknown);
    assert_eq!(sent.len(), 1, "{sent:#?}");

    // The tokens' table, beside the records' one; the redeemed token's row.
    let rows = server.psql("SELECT count(*) FROM idem_records_tokens WHERE redeemed");
    assert_eq!(rows.trim(), "3", "the two of the warm-up and this one");

    // A submission: the redemption, the claim, the completion; its double: the redemption and
    // the replaying claim.
    let token = idem.scope(tokens::issue("forms", ttl)).await.unwrap();
    for (value, expected, statements) in [(7, Status::Executed, 3), (8, Status::Replayed, 2)] {
        let (outcome, sent) = sent_during(
            &server,
            Call::new("forms", &token)
                .store(store.clone())
                .redeeming()
                .run(async move { value }),
        )
        .await;
        let outcome = outcome.unwrap();
        assert_eq!((outcome.value, outcome.status), (7, expected));
        assert_eq!(sent.len(), statements, "{sent:#?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_tokens_table_an_operation_says_what_to_create() {
    let server = PostgresServer::quiet();
    let store = PostgresStore::open(&server.url()).await.unwrap();
    server.psql("DROP TABLE idem_records_tokens");
    let idem = Idem::with_settings(store.clone(), &Config::default());
    let error = idem
        .scope(tokens::issue("forms", Duration::from_secs(60)))
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("CREATE TABLE IF NOT EXISTS"),
        "{error}"
    );
    // Calls are unaffected; stats counts no tokens.
    Call::new("s", "k")
        .store(store.clone())
        .run(async { 1 })
        .await
        .unwrap();
    let stats = idem.scope(idem::stats(100)).await.unwrap();
    assert_eq!((stats.completed, stats.tokens), (1, 0));
    server.psql(idem::postgres::TOKENS_MIGRATION);
    let token = idem
        .scope(tokens::issue("forms", Duration::from_secs(60)))
        .await
        .unwrap();
    let redeemed = idem.scope(tokens::redeem("forms", &token)).await.unwrap();
    assert_eq!(redeemed, Redemption::Valid);
}

/// Two issues of one bounded scope whose statements both began before either could see the
/// other's token (they waited on the scope's row, locked by a transaction of the test): the
/// second counts the first's token all the same (the upsert works on the row's newest version,
/// not the statement's snapshot), so the bound holds. A `count(*)` of the scope's tokens would
/// have let both through.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_bound_counts_issues_the_statement_could_not_see() {
    let server = PostgresServer::quiet();
    let store = PostgresStore::connect_with(&server.url(), PostgresOptions::default().pool_size(4))
        .await
        .unwrap();
    let idem = Idem::with_settings(store, &Config::default());
    let ttl = Duration::from_secs(600);
    idem.scope(tokens::issue_bounded("forms", ttl, 2))
        .await
        .unwrap();
    let group = idem::store::TokenKey::new("idem", "forms", "-")
        .group()
        .to_owned();
    let pool = sqlx::PgPool::connect(&server.url()).await.unwrap();
    let mut holder = pool.begin().await.unwrap();
    let locked: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT 1 FROM idem_records_tokens WHERE scope = $1 AND token = '' FOR UPDATE) AS head",
    )
    .bind(&group)
    .fetch_one(&mut *holder)
    .await
    .unwrap();
    assert_eq!(locked, 1, "the scope's row");
    let issues: Vec<_> = (0..2)
        .map(|_| {
            let idem = idem.clone();
            tokio::spawn(async move { idem.scope(tokens::issue_bounded("forms", ttl, 2)).await })
        })
        .collect();
    // Both statements start (and take their snapshots) while the row is locked.
    let waiting = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let waiting: i64 = sqlx::query_scalar(waiting).fetch_one(&pool).await.unwrap();
        if waiting >= 2 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "both issues wait on the row"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    holder.commit().await.unwrap();
    let mut issued = 0;
    for issue in issues {
        match issue.await.unwrap() {
            Ok(_) => issued += 1,
            Err(idem::Error::TooManyTokens { max_live: 2, .. }) => {}
            Err(error) => panic!("{error}"),
        }
    }
    assert_eq!(issued, 1, "one more token within the bound of 2, not two");
}
