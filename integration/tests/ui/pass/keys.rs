//! Keys: a tuple of `Display` values of different types, a call, a field of a pattern-bound
//! argument, and a borrowed `str`; with a fingerprint of the whole request.
#![deny(warnings)]

use idem::idempotent;
use serde::Serialize;

#[derive(Serialize)]
struct Transfer {
    id: u128,
    cents: i64,
}

#[idempotent(key = (tenant, transfer.id, 'x', 1.5), fingerprint = transfer)]
async fn tuple(tenant: &str, transfer: &Transfer) -> i64 {
    transfer.cents
}

#[idempotent(key = (id,))]
async fn one_tuple(id: u32) -> u32 {
    id
}

#[idempotent(key = transfer_key(&t), fingerprint = (t.id, t.cents))]
async fn computed(t: Transfer) -> i64 {
    t.cents
}

#[idempotent(key = id)]
async fn destructured(Transfer { id, cents }: Transfer) -> i64 {
    let _ = id;
    cents
}

fn transfer_key(t: &Transfer) -> String {
    format!("transfer-{}", t.id)
}

fn main() {
    let t = Transfer { id: 1, cents: 2 };
    drop(tuple("acme", &t));
    drop(one_tuple(3));
    drop(computed(Transfer { id: 2, cents: 3 }));
    drop(destructured(t));
}
