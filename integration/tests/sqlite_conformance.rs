//! The store conformance suite of `idem::testing`, unchanged, against `SqliteStore`: each case
//! on a database file of its own, and once more on an in-memory database.

mod support;

use support::sqlite::TempDb;

async fn sqlite_file() -> (idem::SqliteStore, TempDb) {
    let db = TempDb::new("conformance");
    let store = idem::SqliteStore::open(&db.url())
        .await
        .expect("open the test's SQLite file");
    (store, db)
}

async fn sqlite_memory() -> (idem::SqliteStore, ()) {
    let store = idem::SqliteStore::open("sqlite::memory:")
        .await
        .expect("open an in-memory SQLite database");
    (store, ())
}

idem::conformance_tests!(sqlite, sqlite_file());
idem::conformance_tests!(sqlite_memory, sqlite_memory());
