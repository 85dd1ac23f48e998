//! The SQLite store on files of a temporary directory: what the integration tests do not reach
//! (what `IDEM_STORE=sqlite://…` opens, keys SQLite must keep apart, files it cannot open).

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;

/// A directory of its own, deleted when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "idem-sqlite-unit-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn url(&self, file: &str) -> String {
        format!("sqlite://{}", self.0.join(file).display())
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idem_store_sqlite_opens_the_url_with_the_settings_that_apply() {
    let dir = TempDir::new();
    let config = crate::Config::default()
        .store(dir.url("config.db"))
        .pool_size(2)
        .connect_timeout(Duration::from_secs(3))
        .command_timeout(Duration::from_millis(750));
    config.validate().expect("sqlite:// is a built-in scheme");
    let idem = crate::context::Idem::connect(&config).await.unwrap();
    let store = idem.store().downcast_ref::<SqliteStore>().unwrap();
    assert_eq!(store.shared.busy_timeout, Some(Duration::from_millis(750)));
    assert_eq!(store.pool().options().get_max_connections(), 2);
    assert_eq!(
        store.pool().options().get_acquire_timeout(),
        Duration::from_secs(3)
    );
    assert_eq!(store.shared.writes.options().get_max_connections(), 1);
    assert!(dir.0.join("config.db").exists(), "the file is created");
    assert!(
        store.describe().ends_with(r#"config.db ("idem_records")"#),
        "{}",
        store.describe()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_memory_database_is_the_stores_alone_and_works() {
    let store = SqliteStore::open("sqlite::memory:").await.unwrap();
    let other = SqliteStore::open("sqlite::memory:").await.unwrap();
    let lease = Duration::from_secs(10);
    let (mine, theirs) = (Claim::new(None), Claim::new(None));
    assert_eq!(store.claim("idem:s:k", &mine, lease).await.unwrap(), None);
    assert_eq!(
        store.claim("idem:s:k", &theirs, lease).await.unwrap(),
        Some(Record::InProgress(mine.clone()))
    );
    assert_eq!(
        other.claim("idem:s:k", &theirs, lease).await.unwrap(),
        None,
        "another in-memory store is another database"
    );
    assert_eq!(
        store
            .complete("idem:s:k", &mine, b"done", lease)
            .await
            .unwrap(),
        Fence::Held
    );
    assert_eq!(store.describe(), r#"sqlite::memory: ("idem_records")"#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_differing_after_a_nul_are_distinct() {
    let dir = TempDir::new();
    let store = SqliteStore::open(&dir.url("nul.db")).await.unwrap();
    let lease = Duration::from_secs(10);
    let (a, b) = (Claim::new(None), Claim::new(None));
    assert_eq!(store.claim("idem:s:a\0x", &a, lease).await.unwrap(), None);
    assert_eq!(store.claim("idem:s:a\0y", &b, lease).await.unwrap(), None);
    assert_eq!(
        store.claim("idem:s:a", &b, lease).await.unwrap(),
        None,
        "the key before the NUL is a third one"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_path_in_a_missing_directory_is_a_configuration_error() {
    let dir = TempDir::new();
    let error = SqliteStore::open(&dir.url("missing/idem.db"))
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Config(_)), "{error:?}");
    assert!(error.to_string().contains("check the path"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_is_not_a_database_is_a_configuration_error() {
    let dir = TempDir::new();
    std::fs::write(
        dir.0.join("text.db"),
        "not a database, only text ".repeat(100),
    )
    .unwrap();
    let error = SqliteStore::open(&dir.url("text.db")).await.unwrap_err();
    assert!(matches!(error, Error::Config(_)), "{error:?}");
}
