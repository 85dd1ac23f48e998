use idem::idempotent;
use sqlx::PgConnection;

#[idempotent(key = id, tx = conn, store = idem::MemoryStore::new())]
async fn transfer(conn: &mut PgConnection, id: u64) -> u64 {
    let _ = conn;
    id
}

fn main() {}
