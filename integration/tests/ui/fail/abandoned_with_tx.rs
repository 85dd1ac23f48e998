// A transactional attempt never outlives its transaction: the error is on `abandoned`.
use idem::idempotent;
use sqlx::PgConnection;

#[idempotent(key = id, tx = conn, abandoned = "fail")]
async fn transfer(conn: &mut PgConnection, id: u64) -> u64 {
    let _ = conn;
    id
}

fn main() {}
