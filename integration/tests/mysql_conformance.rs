//! The store conformance suite of `idem::testing`, unchanged, against `MySqlStore`: each case
//! on a database of its own, on the MariaDB server of the test process; and again on a store
//! that inserts before it reads on every claim.

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

/// The same store, inserting before it reads on every claim: the order a store of mostly first
/// calls learns (`ClaimOrder::Learnt`), which a new store in these cases seldom reaches.
async fn insert_first_store() -> (idem::MySqlStore, ()) {
    let url = MariaDb::shared().database("conformance_insert_first");
    let options =
        idem::MySqlOptions::default().claim_order(idem::store::mysql::ClaimOrder::InsertFirst);
    let store = idem::MySqlStore::connect_with(&url, options)
        .await
        .expect("connect to the test's MariaDB");
    (store, ())
}

idem::conformance_tests!(mysql_insert_first, insert_first_store());
