//! Arguments borrowed from the caller's stack: nothing has to be `'static`, and the key is
//! computed from the borrows before the body runs.
#![deny(warnings)]

use idem::idempotent;
use serde::{Deserialize, Serialize};

#[derive(Serialize)]
struct Request<'a> {
    order_id: &'a str,
    lines: Vec<String>,
}

#[derive(Serialize, Deserialize)]
struct Receipt {
    order_id: String,
    lines: usize,
}

#[idempotent(key = req.order_id, fingerprint = req)]
async fn checkout(req: &Request<'_>, note: &str) -> Receipt {
    let _ = note;
    Receipt {
        order_id: req.order_id.to_owned(),
        lines: req.lines.len(),
    }
}

#[idempotent(key = name)]
async fn greet(name: &str) -> String {
    format!("hello {name}")
}

async fn caller() -> Result<(), idem::Error> {
    // Locals, not 'static: the future borrows them for as long as it runs.
    let id = String::from("order-7");
    let req = Request {
        order_id: &id,
        lines: vec![String::from("book")],
    };
    let note = String::from("gift");
    let receipt = checkout(&req, &note).await?;
    assert_eq!((receipt.order_id.as_str(), receipt.lines), ("order-7", 1));
    let name = id.clone();
    greet(&name).await?;
    Ok(())
}

fn main() {
    drop(caller());
}
