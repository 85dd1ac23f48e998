use idem::idempotent;

struct OrderId(u64);

#[idempotent(key = order)]
async fn charge(order: &OrderId) -> u64 {
    order.0
}

#[idempotent(key = (order.0, order))]
async fn refund(order: &OrderId) -> u64 {
    order.0
}

fn main() {
    drop(charge(&OrderId(1)));
    drop(refund(&OrderId(1)));
}
