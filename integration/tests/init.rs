//! `idem::init` runs once per process: this binary holds the one test that calls it.

use std::time::Duration;

use idem::{Config, Error};

#[tokio::test]
async fn a_second_init_fails_before_it_connects() {
    idem::init(Config::default()).await.expect("the first init");
    // Nothing listens on port 1: were it tried, this would be `Error::Connect`.
    let second = Config::default()
        .store("redis://127.0.0.1:1/0")
        .connect_timeout(Duration::from_secs(5));
    let error = idem::init(second).await.unwrap_err();
    assert!(matches!(error, Error::AlreadyInitialized), "{error:?}");
}
