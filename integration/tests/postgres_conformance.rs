//! The store conformance suite of `idem::testing`, unchanged, against `PostgresStore`: each
//! case on a PostgreSQL of its own.

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
