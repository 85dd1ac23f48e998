//! An order API whose `POST /orders` is idempotent per `Idempotency-Key` header.
//!
//! ```text
//! cargo run -p idem-integration --example http_api                     # memory store, port 3000
//! IDEM_STORE=redis://127.0.0.1:6379/0 PORT=8080 cargo run -p idem-integration --example http_api
//! ```
//!
//! Then create an order, and retry the same request (as a client does after a timeout):
//!
//! ```text
//! curl -i -X POST localhost:3000/orders -H 'Authorization: Bearer alice' \
//!      -H 'Idempotency-Key: 5b6b8f0e-order-1' -H 'Content-Type: application/json' \
//!      -d '{"item":"book","quantity":2}'
//! ```
//!
//! The retry returns the same order, with `idempotent-replayed: true`, and the server prints
//! one "created order" line. The same key with another body is `422`, a missing key `400`, and
//! the same key sent by another client (`Bearer bob`) is another order.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header, request::Parts};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use idem::http::IdempotencyLayer;
use serde::{Deserialize, Serialize};

#[derive(Debug, Deserialize)]
struct NewOrder {
    item: String,
    quantity: u32,
}

#[derive(Debug, Serialize)]
struct Order {
    id: u64,
    customer: String,
    item: String,
    quantity: u32,
}

/// The order ids handed out so far (a database would do this).
struct Orders {
    last_id: AtomicU64,
}

/// The client of a request: its bearer token. A real service would check it.
fn customer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    value.strip_prefix("Bearer ").map(str::to_owned)
}

async fn create_order(
    State(orders): State<Arc<Orders>>,
    headers: HeaderMap,
    Json(new): Json<NewOrder>,
) -> Response {
    let Some(customer) = customer(&headers) else {
        return (
            StatusCode::UNAUTHORIZED,
            "send Authorization: Bearer <token>",
        )
            .into_response();
    };
    let id = orders.last_id.fetch_add(1, Ordering::SeqCst) + 1;
    println!(
        "created order {id}: {} x {} for {customer}",
        new.quantity, new.item
    );
    let order = Order {
        id,
        customer,
        item: new.item,
        quantity: new.quantity,
    };
    (
        StatusCode::CREATED,
        [(header::LOCATION, format!("/orders/{id}"))],
        Json(order),
    )
        .into_response()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    idem::init(idem::Config::from_env()?).await?;
    let port: u16 = match std::env::var("PORT") {
        Ok(port) => port
            .parse()
            .map_err(|_| format!("PORT=`{port}` is not a port number"))?,
        Err(_) => 3000,
    };

    let idempotency = IdempotencyLayer::new()
        .required(true)
        // Keys are per customer: one customer never gets another's order.
        .principal(|request: &Parts| customer(&request.headers));
    let app = Router::new()
        .route("/orders", post(create_order))
        .with_state(Arc::new(Orders {
            last_id: AtomicU64::new(0),
        }))
        .layer(idempotency);

    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!(
        "listening on http://{} (idempotency store: {})",
        listener.local_addr()?,
        idem::Idem::current()?.store().describe()
    );
    axum::serve(listener, app).await?;
    Ok(())
}
