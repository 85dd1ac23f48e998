// An application on another sqlx version passes its own `PgConnection`: a type of the same name
// that is not sqlx 0.9's. The error names the version idem uses.
use idem::idempotent;

mod sqlx08 {
    pub struct PgConnection;
}
use sqlx08::PgConnection;

#[idempotent(key = id, tx = conn)]
async fn transfer(conn: &mut PgConnection, id: u64) -> u64 {
    let _ = conn;
    id
}

fn main() {}
