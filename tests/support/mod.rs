//! Helpers shared by the integration tests. Each test file uses a part of them.
#![allow(dead_code)]

pub mod calls;
pub mod cluster;
pub mod harness;
pub mod nats;
pub mod postgres;
pub mod redis;
