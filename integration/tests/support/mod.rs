//! Helpers shared by the integration tests. Each test file uses a part of them.
#![allow(dead_code)]

pub mod calls;
pub mod cluster;
pub mod crash;
pub mod harness;
#[cfg(feature = "http")]
pub mod http;
pub mod mariadb;
pub mod nats;
pub mod pgbouncer;
pub mod postgres;
pub mod redis;
pub mod sqlite;
pub mod workers;
