//! [`Stats`]: what a store reports when an operator counts its records, in all and per scope.

use crate::key;

/// How many records a store holds under a key prefix, by state and by scope, as
/// [`Store::stats`](crate::Store::stats) reports them: for operators (see
/// [`idem::stats`](crate::stats)), never on the path of a call.
///
/// Counting stops after a limit, so a large store is sampled rather than read whole:
/// [`exact`](Stats::exact) tells which. Records past their expiry are not counted.
///
/// A store that reads its records' keys counts each with [`count`](Stats::count), which files
/// it under its scope too:
///
/// ```
/// # use idem_runtime as idem;
/// let mut stats = idem::Stats::new(0, 0, true);
/// stats.count("idem:", b"idem:billing.invoice:inv-1", false);
/// stats.count("idem:", b"idem:billing.invoice:inv-2", true);
/// stats.count("idem:", b"idem:shop.charge:o-7", false);
/// assert_eq!((stats.in_progress, stats.completed, stats.total()), (1, 2, 3));
/// let scopes = stats.scopes.as_deref().unwrap();
/// assert_eq!(scopes[0].scope, "billing.invoice");
/// assert_eq!(scopes[0].name().as_deref(), Some("billing::invoice"));
/// assert_eq!((scopes[0].in_progress, scopes[0].completed), (1, 1));
/// assert_eq!((scopes[1].scope.as_str(), scopes[1].total()), ("shop.charge", 1));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Records of calls in progress among those counted.
    pub in_progress: u64,
    /// Completed records among those counted.
    pub completed: u64,
    /// `true` when every live record under the prefix was counted; `false` when counting
    /// stopped at the limit, so that the counts are those of a sample.
    pub exact: bool,
    /// How many keys the store holds in all, when it can tell cheaply, for context: not only
    /// idem's, and possibly an estimate (see each store's `stats`); `None` if unknown.
    pub store_keys: Option<u64>,
    /// The records counted per scope, ordered by scope as stored; `None` when the store does
    /// not count by scope (a store written before it could, which counts with
    /// [`new`](Stats::new) only). Two scopes where one was expected: a function renamed or
    /// moved without an explicit `scope = "…"`.
    pub scopes: Option<Vec<ScopeStats>>,
    /// Live server-issued tokens (see [`idem::tokens`](crate::tokens)) not yet redeemed, under
    /// the prefix: counted apart from the records, and not within `limit` on stores that count
    /// them with a statement of their own.
    pub tokens: u64,
    /// Redeemed tokens still kept (so that a second submission is told it was redeemed).
    pub redeemed_tokens: u64,
}

/// The records of one scope among those [`Stats`] counted.
///
/// ```
/// # use idem_runtime as idem;
/// let mut stats = idem::Stats::new(0, 0, true);
/// stats.count("idem:", b"idem:app.orders.charge:o-1", true);
/// let charge = &stats.scopes.unwrap()[0];
/// assert_eq!(charge.scope, "app.orders.charge");
/// assert_eq!(charge.name().as_deref(), Some("app::orders::charge"));
/// assert_eq!((charge.in_progress, charge.completed, charge.total()), (1, 0, 1));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ScopeStats {
    /// The scope as it is stored: the segment of the store key between the prefix and the key
    /// (`billing.invoice` for `billing::invoice`; `#` and a SHA-256 in hex for a long or
    /// unprintable scope).
    pub scope: String,
    /// Records of calls in progress of this scope among those counted.
    pub in_progress: u64,
    /// Completed records of this scope among those counted.
    pub completed: u64,
}

impl ScopeStats {
    /// The records of this scope counted: in progress and completed.
    ///
    /// ```
    /// # use idem_runtime as idem;
    /// let mut stats = idem::Stats::new(0, 0, true);
    /// stats.count("idem:", b"idem:s:a", false);
    /// stats.count("idem:", b"idem:s:b", false);
    /// assert_eq!(stats.scopes.unwrap()[0].total(), 2);
    /// ```
    pub fn total(&self) -> u64 {
        self.in_progress + self.completed
    }

    /// The scope as calls name it (`scope = "…"`, or the function's path such as
    /// `billing::invoice`), decoded from [`scope`](ScopeStats::scope); `None` for a hashed
    /// scope, whose name cannot be read back.
    ///
    /// ```
    /// # use idem_runtime as idem;
    /// let mut stats = idem::Stats::new(0, 0, true);
    /// stats.count("idem:", br"idem:billing.invoice\.v2:k", false);
    /// assert_eq!(stats.scopes.unwrap()[0].name().as_deref(), Some("billing::invoice.v2"));
    /// ```
    pub fn name(&self) -> Option<String> {
        key::scope_name(&self.scope)
    }
}

impl Stats {
    /// Counts of `in_progress` and `completed` records, every one under the prefix (`exact`)
    /// or a sample; [`store_keys`](Stats::store_keys) unknown; [`scopes`](Stats::scopes) empty
    /// and filled by [`count`](Stats::count), or `None` once counts are added without them
    /// (`in_progress` or `completed` not 0).
    ///
    /// ```
    /// # use idem_runtime as idem;
    /// let stats = idem::Stats::new(1, 2, true);
    /// assert_eq!((stats.total(), stats.scopes), (3, None));
    /// assert_eq!(idem::Stats::new(0, 0, true).scopes, Some(vec![]));
    /// ```
    pub fn new(in_progress: u64, completed: u64, exact: bool) -> Stats {
        let unscoped = in_progress + completed > 0;
        Stats {
            in_progress,
            completed,
            exact,
            store_keys: None,
            scopes: (!unscoped).then(Vec::new),
            tokens: 0,
            redeemed_tokens: 0,
        }
    }

    /// The same counts, with [`store_keys`](Stats::store_keys).
    ///
    /// ```
    /// # use idem_runtime as idem;
    /// let stats = idem::Stats::new(1, 2, true).with_store_keys(Some(10));
    /// assert_eq!(stats.store_keys, Some(10));
    /// ```
    pub fn with_store_keys(self, store_keys: Option<u64>) -> Stats {
        Stats { store_keys, ..self }
    }

    /// The records counted: in progress and completed.
    ///
    /// ```
    /// # use idem_runtime as idem;
    /// assert_eq!(idem::Stats::new(1, 2, false).total(), 3);
    /// ```
    pub fn total(&self) -> u64 {
        self.in_progress + self.completed
    }

    /// Counts one live record found under `prefix` (the encoded prefix and its `:`, as
    /// [`Store::stats`](crate::Store::stats) receives it), by its store key `key`: in progress
    /// or completed, in all and under its scope (read from `key` by the store key format).
    /// For stores that read their keys; see the type's example.
    pub fn count(&mut self, prefix: &str, key: &[u8], in_progress: bool) {
        let rest = key.strip_prefix(prefix.as_bytes()).unwrap_or(key);
        let scope = String::from_utf8_lossy(key::stored_scope(rest));
        let (running, done) = if in_progress { (1, 0) } else { (0, 1) };
        self.add(&scope, running, done);
    }

    /// Counts one live server-issued token (redeemed or not) found under the prefix: for
    /// stores that read their keys and find tokens among them.
    ///
    /// ```
    /// # use idem_runtime as idem;
    /// let mut stats = idem::Stats::new(0, 0, true);
    /// stats.count_token(false);
    /// stats.count_token(true);
    /// assert_eq!((stats.tokens, stats.redeemed_tokens, stats.total()), (1, 1, 0));
    /// ```
    pub fn count_token(&mut self, redeemed: bool) {
        if redeemed {
            self.redeemed_tokens += 1;
        } else {
            self.tokens += 1;
        }
    }

    /// Adds `in_progress` and `completed` records of the scope `scope` (as stored), in all and
    /// under the scope: for stores that count by scope themselves.
    pub(crate) fn add(&mut self, scope: &str, in_progress: u64, completed: u64) {
        self.in_progress += in_progress;
        self.completed += completed;
        let Some(scopes) = &mut self.scopes else {
            return;
        };
        let at = match scopes.binary_search_by(|counted| counted.scope.as_str().cmp(scope)) {
            Ok(at) => at,
            Err(at) => {
                scopes.insert(
                    at,
                    ScopeStats {
                        scope: scope.to_owned(),
                        in_progress: 0,
                        completed: 0,
                    },
                );
                at
            }
        };
        scopes[at].in_progress += in_progress;
        scopes[at].completed += completed;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_filed_under_their_stored_scope() {
        let mut stats = Stats::new(0, 0, true);
        let keys: [&[u8]; 5] = [br"p:b\:x:k", b"p:a.b:k:1", b"p:a.b:k2", b"p:#0f:k", b"p::k"];
        for (n, key) in keys.into_iter().enumerate() {
            stats.count("p:", key, n % 2 == 0);
        }
        let scopes = stats.scopes.clone().unwrap();
        let seen: Vec<(&str, u64, u64)> = scopes
            .iter()
            .map(|s| (s.scope.as_str(), s.in_progress, s.completed))
            .collect();
        assert_eq!(
            seen,
            [("", 1, 0), ("#0f", 0, 1), ("a.b", 1, 1), (r"b\:x", 1, 0)]
        );
        assert_eq!((stats.in_progress, stats.completed), (3, 2));
        assert_eq!(scopes[3].name().as_deref(), Some("b:x"));
        assert_eq!(scopes[1].name(), None);
        let mut unscoped = Stats::new(1, 0, true);
        unscoped.count("p:", b"p:s:k", false);
        assert_eq!((unscoped.total(), unscoped.scopes), (2, None));
    }
}
