//! The workspace's own test servers (`integration/tests/support/`), shared with the CLI's
//! tests as they are: each test starts its own Redis, Redis Cluster or PostgreSQL on free
//! loopback ports. Each test file uses a part of them.
#![allow(dead_code)]

#[path = "../../../integration/tests/support/cluster.rs"]
pub mod cluster;
#[path = "../../../integration/tests/support/postgres.rs"]
pub mod postgres;
#[path = "../../../integration/tests/support/redis.rs"]
pub mod redis;
