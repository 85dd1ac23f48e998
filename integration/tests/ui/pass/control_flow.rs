//! `?`, early `return` and inner attributes in the body keep their meaning: they leave the
//! body, whose result is then stored (or not) like any other.
#![deny(warnings)]

use idem::idempotent;

#[derive(Debug)]
#[allow(dead_code)]
enum AppError {
    Parse(std::num::ParseIntError),
    Idem(idem::Error),
}

impl From<std::num::ParseIntError> for AppError {
    fn from(error: std::num::ParseIntError) -> Self {
        AppError::Parse(error)
    }
}

impl From<idem::Error> for AppError {
    fn from(error: idem::Error) -> Self {
        AppError::Idem(error)
    }
}

mod app {
    // An alias that takes one argument is still a `Result` by its name.
    pub type Result<T> = std::result::Result<T, super::AppError>;
}

#[idempotent(key = input)]
async fn parse(input: &str) -> app::Result<u64> {
    #![allow(clippy::needless_return)]
    if input.is_empty() {
        return Ok(0);
    }
    let n: u64 = input.trim().parse()?;
    Ok(n)
}

#[idempotent(key = input)]
async fn early(input: &str) -> Vec<u8> {
    if input.is_empty() {
        return Vec::new();
    }
    input.bytes().collect()
}

fn main() {
    drop(parse("1"));
    drop(early(""));
}
