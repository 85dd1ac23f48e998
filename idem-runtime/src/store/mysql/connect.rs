//! What [`MySqlStore::connect`](super::MySqlStore::connect) opens: the URL read, and the pool of
//! the store's connections with their settings.

use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};
use sqlx::{Executor, MySqlPool};

use super::options::MySqlOptions;
use super::sql::STORE_LOCK_WAIT;
use super::table::Table;
use crate::error::Error;

/// The URLs this store takes, for its error messages.
const URL_FORMS: &str =
    "mysql://user:password@host:3306/database or mariadb://user:password@host:3306/database";

/// The store's pool on the database at `url`, opened lazily: `pool_size` connections, each
/// waiting at most 1 s on a row lock (`innodb_lock_wait_timeout`); and its description.
pub(super) fn open(
    url: &str,
    options: &MySqlOptions,
    table: &Table,
) -> Result<(MySqlPool, String), Error> {
    let rest = url
        .strip_prefix("mysql://")
        .or_else(|| url.strip_prefix("mariadb://"))
        .ok_or_else(|| {
            Error::Config(format!("`{url}` is not a MySQL URL; expected {URL_FORMS}"))
        })?;
    let database = rest
        .split_once('/')
        .map(|(_, path)| path.split('?').next().unwrap_or(""))
        .unwrap_or("");
    if database.is_empty() {
        return Err(Error::Config(format!(
            "the MySQL URL `{}` names no database; expected {URL_FORMS}",
            redacted(url)
        )));
    }
    // sqlx reads any scheme's URL the same way: `mariadb://` is `mysql://`.
    let connect: MySqlConnectOptions = format!("mysql://{rest}").parse().map_err(|e| {
        Error::Config(format!(
            "the MySQL URL `{}` is not valid ({e}); expected {URL_FORMS}",
            redacted(url)
        ))
    })?;
    let describe = describe(&connect, table);
    let pool = MySqlPoolOptions::new()
        // sqlx counts connections in a u32: a larger pool_size is as many as it can keep.
        .max_connections(u32::try_from(options.pool_size).unwrap_or(u32::MAX))
        .acquire_timeout(options.connect_timeout)
        .after_connect(|conn, _| {
            Box::pin(async move {
                conn.execute(STORE_LOCK_WAIT).await?;
                Ok(())
            })
        })
        .connect_lazy_with(connect);
    Ok((pool, describe))
}

/// `url` without its password.
fn redacted(url: &str) -> String {
    match (url.split_once("://"), url.rfind('@')) {
        (Some((scheme, rest)), Some(at)) => {
            let user_end = rest.find(':').filter(|&i| i + scheme.len() + 3 < at);
            match user_end {
                Some(colon) => format!("{scheme}://{}:***{}", &rest[..colon], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// `mysql://user@host:port/db (`table`)`: the store without its password.
pub(super) fn describe(options: &MySqlConnectOptions, table: &Table) -> String {
    let host = match options.get_socket() {
        Some(socket) => socket.display().to_string(),
        None => options.get_host().to_owned(),
    };
    format!(
        "mysql://{}@{host}:{}/{} ({})",
        options.get_username(),
        options.get_port(),
        options.get_database().unwrap_or_default(),
        table.quoted()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_mysqls_name_a_database_and_hide_the_password() {
        let table = Table::new("idem_records").unwrap();
        let options = MySqlOptions::default();
        for bad in [
            "postgres://h/db",
            "mysql://u:secret@h:3307",
            "mysql://u:secret@h:3307/",
        ] {
            let error = open(bad, &options, &table).unwrap_err().to_string();
            assert!(
                error.contains("mysql://user:password@host"),
                "{bad}: {error}"
            );
            assert!(!error.contains("secret"), "{bad}: {error}");
        }
        assert_eq!(
            redacted("mysql://u:secret@h:3307/db"),
            "mysql://u:***@h:3307/db"
        );
    }
}
