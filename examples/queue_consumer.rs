//! An at-least-once message consumer that handles each message once, however often the broker
//! delivers it.
//!
//! Brokers (SQS, RabbitMQ, Kafka consumer groups, Redis streams) redeliver a message whose
//! acknowledgement was lost, whose consumer restarted, or whose visibility timeout ran out —
//! sometimes to another consumer while the first one is still working on it. Keying the
//! handler on the message id makes the side effect happen once: a redelivery that arrives
//! while the first delivery is being handled waits for its result, a later one replays it.
//!
//! ```text
//! cargo run --example queue_consumer                                   # in-process memory store
//! IDEM_STORE=redis://127.0.0.1:6379/0 cargo run --example queue_consumer   # shared Redis
//! IDEM_STORE=postgres://user:pass@127.0.0.1:5432/db cargo run --features postgres --example queue_consumer   # PostgreSQL
//! ```
//!
//! On Redis or PostgreSQL, run it twice: the second run is a consumer restarted with every
//! message redelivered, and it ships nothing again until the records' ttl ends.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use idem::idempotent;
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, mpsc};

/// A message as the broker delivers it.
#[derive(Debug, Clone)]
struct Message {
    id: String,
    order: u64,
    items: u32,
}

/// What handling a message produced: the side effect that must happen once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Shipment {
    order: u64,
    parcels: u32,
}

/// How often a shipment was really created in this process.
static SHIPPED: AtomicUsize = AtomicUsize::new(0);

/// Ships the order of a message, once per message id, across both consumers (and across
/// processes that share the store).
#[idempotent(key = msg.id, ttl = "1h", wait = "30s")]
async fn ship(msg: &Message) -> Shipment {
    SHIPPED.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(30)).await; // the warehouse API
    Shipment {
        order: msg.order,
        parcels: msg.items.div_ceil(3),
    }
}

/// The deliveries of an at-least-once broker: every message, some of them twice in a row
/// (lost acknowledgements), and the first five again at the end (a consumer restart).
fn deliveries() -> Vec<Message> {
    let message = |n: u64| Message {
        id: format!("msg-{n:04}"),
        order: 5_000 + n,
        items: (n % 7) as u32 + 1,
    };
    let mut out = Vec::new();
    for n in 1..=20 {
        out.push(message(n));
        if n % 3 == 0 {
            out.push(message(n));
        }
    }
    out.extend((1..=5).map(message));
    out
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    idem::init(idem::Config::from_env()?).await?;
    println!("store: {}", idem::Idem::current()?.store().describe());

    let deliveries = deliveries();
    let distinct: BTreeSet<_> = deliveries.iter().map(|m| m.id.clone()).collect();
    let (broker, queue) = mpsc::channel(deliveries.len());
    for message in &deliveries {
        broker.send(message.clone()).await?;
    }
    drop(broker);

    let queue = Arc::new(Mutex::new(queue));
    let mut consumers = Vec::new();
    for name in ["consumer-a", "consumer-b"] {
        let queue = queue.clone();
        consumers.push(tokio::spawn(async move {
            let mut handled = 0;
            loop {
                let Some(message) = queue.lock().await.recv().await else {
                    break;
                };
                match ship(&message).await {
                    // Acknowledge: the message is handled, whether now or by an earlier delivery.
                    Ok(shipment) => {
                        handled += 1;
                        assert_eq!(shipment.order, message.order);
                    }
                    // Not acknowledged: the broker would deliver it again later.
                    Err(error) => eprintln!("{name}: {} not handled: {error}", message.id),
                }
            }
            (name, handled)
        }));
    }
    for consumer in consumers {
        let (name, handled) = consumer.await?;
        println!("{name}: acknowledged {handled} deliveries");
    }

    let shipped = SHIPPED.load(Ordering::SeqCst);
    println!(
        "deliveries: {}, distinct messages: {}, shipments created: {shipped}, duplicates skipped: {}",
        deliveries.len(),
        distinct.len(),
        deliveries.len() - shipped
    );
    Ok(())
}
