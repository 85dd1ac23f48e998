//! Server-issued tokens on Redis, one round trip each:
//!
//! | operation | Redis |
//! |---|---|
//! | issue | `SET record issued NX PX ttl` |
//! | issue within a bound | script: `TIME`, `ZREMRANGEBYSCORE group -inf now`, `ZCARD group`, then `ZADD group`, `PEXPIREAT group`, `SET record issued PX ttl` (see `scripts.rs`) |
//! | redeem | script: `GET record`, and when it held `issued`, `SET record redeemed PX keep` |
//!
//! A token's record is a string, `issued` or `redeemed`; its group (the scope's bounded
//! tokens) a sorted set by expiry. Both carry the scope's hash tag, so on a Cluster the script
//! is single-slot. Redeeming answers all three cases in one atomic step: what the record held
//! (nothing: unknown or expired; `issued`: this redemption consumed it; `redeemed`: redeemed
//! before). Redis runs scripts one at a time, so of concurrent redemptions exactly one reads
//! `issued`.
//!
//! Why a script and not the one command `SET record redeemed XX GET …`, which answers the same
//! three cases: the redeemed token must live as long as the call it keys is replayed (`keep`,
//! from the first redemption), and no more. With `KEEPTTL` it would live only as long as the
//! token's own ttl, so a double submission after it would be refused while the call still
//! replays; with `PX keep`, every duplicate would push its expiry further, past the call's
//! record, and a late duplicate would then run the call again. The script sets the expiry at
//! the first redemption only.

use redis::Cmd;

use super::RedisStore;
use super::command::{Query, millis};
use crate::error::{StoreError, StoreErrorKind};
use crate::store::token::{ISSUED, REDEEMED};
use crate::store::{Issue, Redemption, TokenKey};

impl RedisStore {
    pub(super) async fn issue(
        &self,
        token: &TokenKey,
        ttl: std::time::Duration,
        max_live: Option<u32>,
    ) -> Result<Issue, StoreError> {
        let ttl = millis(ttl).to_string();
        let record = token.record();
        let shared = &self.shared;
        let Some(max) = max_live else {
            let mut cmd = Cmd::with_capacity(6, record.len() + 32);
            cmd.arg("SET")
                .arg(record)
                .arg(ISSUED)
                .arg("NX")
                .arg("PX")
                .arg(&ttl);
            let answer = shared.query(&Query::command(cmd, record), None).await?;
            return match shared.parse::<Option<String>>(answer.value)? {
                Some(_) => Ok(Issue::Issued),
                // 128 random bits met a live token: never in practice, but never a false yes.
                None => Err(StoreError::new(
                    StoreErrorKind::Protocol,
                    format!(
                        "Redis at {} already holds the new token {record}",
                        shared.url
                    ),
                )),
            };
        };
        let lua = &shared.scripts.issue_token;
        let group = token.group();
        let mut cmd = Cmd::with_capacity(9, group.len() + record.len() + 96);
        cmd.arg("EVALSHA")
            .arg(lua.sha())
            .arg(2)
            .arg(group)
            .arg(record)
            .arg(token.token())
            .arg(&ttl)
            .arg(max);
        let request = Query {
            script: Some(lua),
            ..Query::command(cmd, group)
        };
        let answer = shared.query(&request, None).await?;
        match shared.parse::<i64>(answer.value)? {
            1 => Ok(Issue::Issued),
            _ => Ok(Issue::Full),
        }
    }

    pub(super) async fn redeem(
        &self,
        token: &TokenKey,
        keep: std::time::Duration,
    ) -> Result<Redemption, StoreError> {
        let record = token.record();
        let shared = &self.shared;
        let keep = millis(keep).to_string();
        let request = Query::script(&shared.scripts.redeem_token, record, &[keep.as_bytes()]);
        let answer = shared.query(&request, None).await?;
        match shared.parse::<Option<Vec<u8>>>(answer.value)?.as_deref() {
            None => Ok(Redemption::Unknown),
            Some(held) if held == ISSUED.as_bytes() => Ok(Redemption::Valid),
            Some(held) if held == REDEEMED.as_bytes() => Ok(Redemption::Redeemed),
            Some(other) => Err(StoreError::new(
                StoreErrorKind::Protocol,
                format!(
                    "Redis at {} holds `{}` under the token {record}, which is not a token's state",
                    shared.url,
                    String::from_utf8_lossy(other)
                ),
            )),
        }
    }
}
