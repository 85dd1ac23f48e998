//! The store conformance suite of `idem::testing`, unchanged, against `PostgresStore`: each
//! case on a PostgreSQL of its own; and again on a store that reads before it claims on every
//! claim, and on one whose every claim is the bare upsert.

mod support;

use support::postgres::PostgresServer;

async fn postgres_store() -> (idem::PostgresStore, PostgresServer) {
    let server = PostgresServer::start();
    let store = idem::PostgresStore::open(&server.url())
        .await
        .expect("connect to the test's PostgreSQL");
    (store, server)
}

idem::conformance_tests!(postgres, postgres_store());

/// The same store, reading the key before it claims it on every claim: the order a store of
/// mostly replays learns (`ClaimOrder::Learnt`), which a new store in these cases seldom
/// reaches.
async fn read_first_store() -> (idem::PostgresStore, PostgresServer) {
    let server = PostgresServer::start();
    let options = idem::PostgresOptions::default().claim_order(idem::store::ClaimOrder::ReadFirst);
    let store = idem::PostgresStore::connect_with(&server.url(), options)
        .await
        .expect("connect to the test's PostgreSQL");
    (store, server)
}

idem::conformance_tests!(postgres_read_first, read_first_store());

/// The same store, claiming by the bare upsert on every claim (the read follows when it meets
/// a live row): the order a store of mostly first calls learns.
async fn insert_first_store() -> (idem::PostgresStore, PostgresServer) {
    let server = PostgresServer::start();
    let options =
        idem::PostgresOptions::default().claim_order(idem::store::ClaimOrder::InsertFirst);
    let store = idem::PostgresStore::connect_with(&server.url(), options)
        .await
        .expect("connect to the test's PostgreSQL");
    (store, server)
}

idem::conformance_tests!(postgres_insert_first, insert_first_store());
