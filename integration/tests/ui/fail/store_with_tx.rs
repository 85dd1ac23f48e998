// Either order: the error is on the later of the two options, here `tx`.
use idem::idempotent;
use sqlx::PgConnection;

#[idempotent(key = id, store = idem::MemoryStore::new(), tx = conn)]
async fn transfer(conn: &mut PgConnection, id: u64) -> u64 {
    let _ = conn;
    id
}

fn main() {}
