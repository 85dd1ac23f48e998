//! A SQLite database file in a temporary directory of its own, deleted with its guard: each
//! SQLite test (and each conformance case) on a file no other test touches.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A directory holding one database file (and its `-wal` and `-shm` files), removed on drop.
pub struct TempDb {
    dir: PathBuf,
    file: PathBuf,
}

impl TempDb {
    /// A new directory named after `name`, this process and a counter; the file is not created.
    pub fn new(name: &str) -> TempDb {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "idem-sqlite-{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the test's temporary directory");
        let file = dir.join("idem.db");
        TempDb { dir, file }
    }

    /// The database file's path.
    pub fn path(&self) -> &Path {
        &self.file
    }

    /// The store URL of the file: `sqlite:///tmp/…/idem.db`.
    pub fn url(&self) -> String {
        format!("sqlite://{}", self.file.display())
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
