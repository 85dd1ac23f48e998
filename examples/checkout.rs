//! A checkout that calls a payment gateway idem cannot roll back, and survives workers dying in
//! the middle of it.
//!
//! `place_order` has three steps: reserve the stock, charge the card at the gateway, send the
//! confirmation. For every order a first worker dies right after the charge (it panics: the
//! claim is released, as when a process restarts), and a second worker runs the order again.
//! The same orders are placed three ways, and the program prints what the gateway saw:
//!
//! - with recorded steps (`idem::step`) and a derived key (`idem::derive_key`): the second
//!   worker replays the reservation and the charge from the first one's records and only sends
//!   the confirmation: the gateway is asked once per order;
//! - with a derived key but no steps: the second worker charges again, with the same key, and
//!   the gateway (which deduplicates by `Idempotency-Key`, as Stripe does) charges once;
//! - with a new key per attempt: the gateway charges every order twice.
//!
//! ```text
//! cargo run --example checkout
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::{Deserialize, Serialize};

/// A payment gateway that deduplicates by `Idempotency-Key`: a key it saw gets the first
/// charge's id back, nothing is charged again.
#[derive(Default)]
struct Gateway {
    /// The charge id of every key it saw.
    charges: Mutex<HashMap<String, String>>,
    /// The requests it answered.
    requests: AtomicUsize,
}

impl Gateway {
    async fn charge(&self, idempotency_key: &str, cents: u64) -> String {
        self.requests.fetch_add(1, Ordering::SeqCst);
        let mut charges = self.charges.lock().unwrap();
        let next = charges.len() + 1;
        charges
            .entry(idempotency_key.to_owned())
            .or_insert_with(|| format!("ch_{next:04}_{cents}"))
            .clone()
    }

    fn charged(&self) -> usize {
        self.charges.lock().unwrap().len()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Receipt {
    reservation: String,
    charge: String,
}

/// How `place_order` keys its charge and whether it records its steps.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    StepsAndDerivedKey,
    DerivedKey,
    NewKeyPerAttempt,
}

/// Attempts made so far, for keys that are new on every attempt.
static ATTEMPTS: AtomicUsize = AtomicUsize::new(0);

/// The work of one order; `dies` makes this attempt panic right after the charge.
async fn place_order(
    gateway: &Gateway,
    mode: Mode,
    order: u32,
    dies: bool,
) -> Result<Receipt, idem::Error> {
    let charge_key = match mode {
        // What a body does without idem: a fresh key (a UUID, say) on every attempt.
        Mode::NewKeyPerAttempt => format!("attempt-{}", ATTEMPTS.fetch_add(1, Ordering::SeqCst)),
        _ => idem::derive_key("charge")?,
    };
    let reserve = async { format!("stock-{order}") };
    let charge = gateway.charge(&charge_key, 1250);
    let (reservation, charge) = if mode == Mode::StepsAndDerivedKey {
        (
            idem::step("reserve", reserve).await?,
            idem::step("charge", charge).await?,
        )
    } else {
        (reserve.await, charge.await)
    };
    if dies {
        panic!("the worker dies after the charge");
    }
    let confirm = async { format!("mail for {reservation}") };
    if mode == Mode::StepsAndDerivedKey {
        idem::step("confirm", confirm).await?;
    } else {
        confirm.await;
    }
    Ok(Receipt {
        reservation,
        charge,
    })
}

/// Places `orders` orders in `mode`, each attempted by a worker that dies and then by one that
/// finishes.
async fn run(mode: Mode, orders: u32) -> Gateway {
    let gateway = Gateway::default();
    for order in 0..orders {
        let attempt = |dies| {
            idem::Call::new("shop::place_order", format!("{order}"))
                .run_result(place_order(&gateway, mode, order, dies))
        };
        // The first worker: its panic releases the claim (the key runs again at once); the
        // steps it completed stay recorded.
        let died = caught(std::panic::AssertUnwindSafe(attempt(true))).await;
        assert!(died.is_err(), "the first worker dies");
        let receipt = attempt(false)
            .await
            .expect("the second worker's call")
            .value
            .expect("the second worker places the order");
        assert_eq!(receipt.reservation, format!("stock-{order}"));
    }
    gateway
}

/// Awaits `future`, catching a panic as an `Err`.
async fn caught<F: Future>(future: std::panic::AssertUnwindSafe<F>) -> Result<F::Output, ()> {
    let mut future = std::pin::pin!(future.0);
    std::future::poll_fn(move |cx| {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| future.as_mut().poll(cx))) {
            Ok(std::task::Poll::Ready(value)) => std::task::Poll::Ready(Ok(value)),
            Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
            Err(_) => std::task::Poll::Ready(Err(())),
        }
    })
    .await
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), idem::Error> {
    // The panics are the point of the example: keep them out of the output.
    std::panic::set_hook(Box::new(|_| {}));
    idem::init(idem::Config::default()).await?;
    let orders = 10;
    for (mode, name) in [
        (Mode::StepsAndDerivedKey, "steps + derived key"),
        (Mode::DerivedKey, "derived key, no steps"),
        (Mode::NewKeyPerAttempt, "new key per attempt"),
    ] {
        // Each mode on orders of its own.
        let gateway = idem::with_store(idem::MemoryStore::new(), run(mode, orders)).await;
        println!(
            "{name:>22}: {orders} orders, 2 workers each (the first dies after the charge): \
             gateway requests {}, cards charged {}",
            gateway.requests.load(Ordering::SeqCst),
            gateway.charged()
        );
    }
    Ok(())
}
