//! `crate = path`: the runtime reached through a re-export, a renamed crate or a string path.
#![deny(warnings)]

extern crate idem as renamed;

mod runtime {
    pub use ::idem as reexported;
}

#[renamed::idempotent(key = id, crate = crate::runtime::reexported)]
async fn through_reexport(id: u64) -> u64 {
    id
}

#[renamed::idempotent(key = id, crate = renamed)]
async fn through_rename(id: u64) -> u64 {
    id
}

#[renamed::idempotent(key = id, crate = "::renamed")]
async fn through_string(id: u64) -> u64 {
    id
}

fn main() {
    drop((through_reexport(1), through_rename(2), through_string(3)));
}
