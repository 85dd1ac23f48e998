//! The store conformance suite of `idem::testing`, unchanged, against `MySqlStore`: each case
//! on a database of its own, on the MariaDB server of the test process.

mod support;

use support::mariadb::MariaDb;

async fn mysql_store() -> (idem::MySqlStore, ()) {
    let url = MariaDb::shared().database("conformance");
    let store = idem::MySqlStore::open(&url)
        .await
        .expect("connect to the test's MariaDB");
    (store, ())
}

idem::conformance_tests!(mysql, mysql_store());
