//! A small payment service whose `charge` must never run twice for one order.
//!
//! It charges an order once, retries the same request (as a client does after a timeout),
//! sends 20 concurrent duplicates (as a load balancer retrying does), and prints how many
//! times the gateway was really called, and whether every caller got the same receipt.
//!
//! ```text
//! cargo run --example quickstart                                  # in-process memory store
//! IDEM_STORE=redis://127.0.0.1:6379/0 cargo run --example quickstart   # shared Redis
//! IDEM_STORE=postgres://user:pass@127.0.0.1:5432/db cargo run --features postgres --example quickstart   # PostgreSQL
//! IDEM_STORE=mysql://user:pass@127.0.0.1:3306/db cargo run --features mysql --example quickstart   # MySQL / MariaDB
//! ```
//!
//! On a shared store (Redis, PostgreSQL, MySQL, a SQLite file), a second run of the process replays the first run's
//! receipt: the gateway is called zero times until the record's ttl ends.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use idem::idempotent;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ChargeRequest {
    order_id: String,
    cents: u64,
    card: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Receipt {
    charge_id: String,
    order_id: String,
    cents: u64,
}

#[derive(Debug, thiserror::Error)]
enum PaymentError {
    #[error("the card was declined")]
    Declined,
    #[error(transparent)]
    Idempotency(#[from] idem::Error),
}

/// How often the (pretend) payment gateway was really called in this process.
static GATEWAY_CALLS: AtomicUsize = AtomicUsize::new(0);

/// Charges an order at most once per `order_id`, whoever calls and however often. The
/// fingerprint makes a reused order id with a different amount an error, not a wrong replay.
#[idempotent(key = req.order_id, ttl = "24h", fingerprint = (req.cents, &req.card))]
async fn charge(req: &ChargeRequest) -> Result<Receipt, PaymentError> {
    GATEWAY_CALLS.fetch_add(1, Ordering::SeqCst);
    if req.card.ends_with("0002") {
        return Err(PaymentError::Declined);
    }
    tokio::time::sleep(Duration::from_millis(200)).await; // the gateway's round trip
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    Ok(Receipt {
        charge_id: format!("ch_{nanos:x}"),
        order_id: req.order_id.clone(),
        cents: req.cents,
    })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    idem::init(idem::Config::from_env()?).await?;
    println!("store: {}", idem::Idem::current()?.store().describe());

    let request = ChargeRequest {
        order_id: "order-1001".into(),
        cents: 4_999,
        card: "4242424242424242".into(),
    };

    // The first call and a retry of it.
    let first = charge(&request).await?;
    let retry = charge(&request).await?;

    // 20 concurrent duplicates.
    let duplicates: Vec<_> = (0..20)
        .map(|_| {
            let request = request.clone();
            tokio::spawn(async move { charge(&request).await })
        })
        .collect();
    let mut receipts = vec![first.clone(), retry];
    for duplicate in duplicates {
        receipts.push(duplicate.await??);
    }

    let distinct: BTreeSet<_> = receipts.iter().map(|r| r.charge_id.as_str()).collect();
    println!(
        "calls: {}, gateway calls (the body really ran): {}",
        receipts.len(),
        GATEWAY_CALLS.load(Ordering::SeqCst)
    );
    println!(
        "distinct receipts: {} ({}), every caller got the same receipt: {}",
        distinct.len(),
        first.charge_id,
        distinct.len() == 1
    );

    // The same order id with another amount is refused, not answered with the old receipt.
    let tampered = ChargeRequest {
        cents: 1,
        ..request.clone()
    };
    match charge(&tampered).await {
        Err(PaymentError::Idempotency(idem::Error::KeyMismatch { .. })) => {
            println!("order-1001 with another amount: refused (fingerprint mismatch)")
        }
        other => println!("order-1001 with another amount: unexpected {other:?}"),
    }

    // A declined card is an error: not stored, so a retry with another card runs again.
    let declined = ChargeRequest {
        order_id: "order-1002".into(),
        card: "4000000000000002".into(),
        ..request
    };
    let before = GATEWAY_CALLS.load(Ordering::SeqCst);
    let _ = charge(&declined).await;
    let _ = charge(&declined).await;
    println!(
        "a declined charge retried: the body ran {} times (errors are not stored)",
        GATEWAY_CALLS.load(Ordering::SeqCst) - before
    );
    Ok(())
}
