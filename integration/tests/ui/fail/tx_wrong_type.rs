use idem::idempotent;
use sqlx::PgPool;

#[idempotent(key = id, tx = pool)]
async fn transfer(pool: &PgPool, id: u64) -> u64 {
    id
}

fn main() {}
