//! The arguments of `#[idempotent(...)]`, read in two phases into [`Args`].
//!
//! 1. [`RawArgs`] holds what was written: each `name = value` is parsed by its own small
//!    parser into a slot filled at most once ([`once`]), so that every mistake in one option
//!    gets its own message on the offending token: an unknown option lists the valid ones, a
//!    duplicate points at the second occurrence, a bad duration literal says what a duration
//!    looks like.
//! 2. [`RawArgs::build`] applies every rule that involves more than one option (or an option's
//!    absence) and yields the final [`Args`]. The rules about the function itself, `tx`
//!    naming one of its arguments included, are in `signature.rs`.

use std::time::Duration;

use humantime::DurationError;

use proc_macro2::Span;
use syn::ext::IdentExt;
use syn::parse::{Parse, ParseStream};
use syn::{Error, Expr, ExprLit, Ident, Lit, LitStr, Path, Result, Token};

/// Every option, in the order the documentation lists them.
const OPTIONS: [&str; 11] = [
    "key",
    "ttl",
    "lease",
    "wait",
    "fingerprint",
    "cache_err",
    "abandoned",
    "scope",
    "store",
    "tx",
    "crate",
];

/// What a duration literal looks like, for error messages.
const DURATION_EXAMPLES: &str = r#"expected a duration such as "250ms", "30s", "24h" or "7d""#;

/// The parsed arguments of one `#[idempotent(...)]` attribute.
pub(crate) struct Args {
    pub(crate) key: Key,
    pub(crate) ttl: Option<Timing>,
    pub(crate) lease: Option<Timing>,
    pub(crate) wait: Option<Timing>,
    pub(crate) fingerprint: Option<Expr>,
    pub(crate) cache_err: CacheErr,
    /// `abandoned = "rerun"` or `"fail"`: the policy's variant name.
    pub(crate) abandoned: Option<Ident>,
    pub(crate) scope: Option<LitStr>,
    pub(crate) store: Option<Expr>,
    /// `tx = conn`: the argument that is the caller's PostgreSQL connection.
    pub(crate) tx: Option<Ident>,
    pub(crate) krate: Option<Path>,
}

/// `key = ...`: one `Display` value, or the parts of a tuple literal.
pub(crate) enum Key {
    One(Expr),
    Parts(Vec<Expr>),
}

/// A duration option: a literal checked at compile time, or an expression of type `Duration`.
pub(crate) enum Timing {
    Literal { value: Duration, span: Span },
    Expr(Expr),
}

/// `cache_err = ...`: which `Err` results are stored.
pub(crate) enum CacheErr {
    /// Absent or `false`: every error releases the key.
    Never,
    /// `true`: every error is stored.
    Every(Span),
    /// A closure or function `|e: &E| -> bool`.
    Predicate(Expr),
}

impl Parse for Args {
    fn parse(input: ParseStream) -> Result<Self> {
        input.parse::<RawArgs>()?.build()
    }
}

/// Phase 1: the options as written, each at most once, not yet checked against each other.
#[derive(Default)]
struct RawArgs {
    key: Option<Given<Key>>,
    ttl: Option<Given<Timing>>,
    lease: Option<Given<Timing>>,
    wait: Option<Given<Timing>>,
    fingerprint: Option<Given<Expr>>,
    cache_err: Option<Given<CacheErr>>,
    abandoned: Option<Given<Ident>>,
    scope: Option<Given<LitStr>>,
    store: Option<Given<Expr>>,
    tx: Option<Given<Ident>>,
    krate: Option<Given<Path>>,
    /// How many options were read, so that each knows its place in the list.
    count: usize,
}

/// One option's value, with where its name was written.
struct Given<T> {
    value: T,
    /// The option's name, where a rule that involves it points.
    name: Span,
    /// The option's place in the list: of two options that exclude each other, the error
    /// points at the later one.
    position: usize,
}

impl<T> Given<T> {
    /// The value, once the rules no longer need the span.
    fn into_value(self) -> T {
        self.value
    }
}

/// Why `tx` and `store` exclude each other.
const TX_AND_STORE: &str = "`tx` and `store` cannot be combined: with `tx`, the record is written \
     through the connection's transaction, in the table of the configured PostgresStore (or \
     `public.idem_records`); remove one of them";

impl Parse for RawArgs {
    fn parse(input: ParseStream) -> Result<Self> {
        let mut raw = RawArgs::default();
        while !input.is_empty() {
            raw.parse_option(input)?;
            if input.is_empty() {
                break;
            }
            input.parse::<Token![,]>()?;
        }
        Ok(raw)
    }
}

impl RawArgs {
    /// Parses one `name = value` pair into its slot.
    fn parse_option(&mut self, input: ParseStream) -> Result<()> {
        if !input.peek(Ident::peek_any) {
            return Err(input.error(format!(
                "expected an option such as `key = req.id`, one of: {}",
                OPTIONS.join(", ")
            )));
        }
        // `parse_any`, for `crate`; a raw identifier such as `r#key` is no option's name.
        let name = input.call(Ident::parse_any)?;
        let position = self.count;
        self.count += 1;
        let at = (&name, position);
        match name.to_string().as_str() {
            "key" => once(&mut self.key, at, input, parse_key),
            "ttl" => once(&mut self.ttl, at, input, |input| parse_timing(input, &TTL)),
            "lease" => once(&mut self.lease, at, input, |input| {
                parse_timing(input, &LEASE)
            }),
            "wait" => once(&mut self.wait, at, input, |input| {
                parse_timing(input, &WAIT)
            }),
            "fingerprint" => once(&mut self.fingerprint, at, input, Expr::parse),
            "cache_err" => once(&mut self.cache_err, at, input, parse_cache_err),
            "abandoned" => once(&mut self.abandoned, at, input, parse_abandoned),
            "scope" => once(&mut self.scope, at, input, parse_scope),
            "store" => once(&mut self.store, at, input, Expr::parse),
            "tx" => once(&mut self.tx, at, input, parse_tx),
            "crate" => once(&mut self.krate, at, input, parse_crate),
            _ => Err(Error::new(
                name.span(),
                format!(
                    "unknown option `{name}`, expected one of: {}",
                    OPTIONS.join(", ")
                ),
            )),
        }
    }

    /// Phase 2: checks every rule that involves more than one option, or an option's absence,
    /// and yields the final [`Args`]. Each broken rule is an error at the option it names, with
    /// what to do; when several are broken, all of them are reported.
    ///
    /// The rules:
    /// - `tx` and `store` exclude each other: the error is on the later of the two;
    /// - `tx` and `abandoned` exclude each other: the error is on `abandoned`;
    /// - `key` is required: the error is on the whole attribute, which lacks it;
    /// - `cache_err` left out means `cache_err = false`.
    fn build(self) -> Result<Args> {
        let exclusive = match (&self.tx, &self.store) {
            (Some(tx), Some(store)) => {
                let later = if tx.position > store.position {
                    tx.name
                } else {
                    store.name
                };
                Err(Error::new(later, TX_AND_STORE))
            }
            _ => Ok(()),
        };
        let exclusive = match (exclusive, &self.tx, &self.abandoned) {
            (Ok(()), Some(_), Some(abandoned)) => Err(Error::new(abandoned.name, TX_AND_ABANDONED)),
            (exclusive, _, _) => exclusive,
        };
        let key = self.key.ok_or_else(|| {
            Error::new(
                Span::call_site(),
                "missing `key`: #[idempotent] needs the idempotency key of each call, \
                 built from the arguments, e.g. `#[idempotent(key = req.id)]`",
            )
        });
        let ((), key) = both(exclusive, key)?;
        Ok(Args {
            key: key.value,
            ttl: self.ttl.map(Given::into_value),
            lease: self.lease.map(Given::into_value),
            wait: self.wait.map(Given::into_value),
            fingerprint: self.fingerprint.map(Given::into_value),
            cache_err: self.cache_err.map_or(CacheErr::Never, Given::into_value),
            abandoned: self.abandoned.map(Given::into_value),
            scope: self.scope.map(Given::into_value),
            store: self.store.map(Given::into_value),
            tx: self.tx.map(Given::into_value),
            krate: self.krate.map(Given::into_value),
        })
    }
}

/// Fills `slot`, the option named at `at` (its name and place in the list), with `= value`,
/// the value read by `value`. The same option a second time is an error on its name.
fn once<T>(
    slot: &mut Option<Given<T>>,
    (name, position): (&Ident, usize),
    input: ParseStream,
    value: impl FnOnce(ParseStream) -> Result<T>,
) -> Result<()> {
    if slot.is_some() {
        return Err(Error::new(
            name.span(),
            format!("duplicate option `{name}`: each option can be given once"),
        ));
    }
    input.parse::<Token![=]>()?;
    *slot = Some(Given {
        value: value(input)?,
        name: name.span(),
        position,
    });
    Ok(())
}

/// Both values, or the errors of both: every broken rule is reported, not only the first.
pub(crate) fn both<A, B>(a: Result<A>, b: Result<B>) -> Result<(A, B)> {
    match (a, b) {
        (Ok(a), Ok(b)) => Ok((a, b)),
        (Err(mut error), Err(other)) => {
            error.combine(other);
            Err(error)
        }
        (Err(error), Ok(_)) | (Ok(_), Err(error)) => Err(error),
    }
}

fn parse_key(input: ParseStream) -> Result<Key> {
    match input.parse::<Expr>()? {
        Expr::Tuple(tuple) if tuple.elems.is_empty() => Err(Error::new_spanned(
            tuple,
            "the key is empty: give a value, or a tuple of values, \
             such as `key = (tenant, req.id)`",
        )),
        Expr::Tuple(tuple) => Ok(Key::Parts(tuple.elems.into_iter().collect())),
        expr => Ok(Key::One(expr)),
    }
}

/// A duration option: its name and the shortest value it takes.
struct DurationOption {
    name: &'static str,
    min: Option<Minimum>,
}

/// The shortest value of a duration option, and why. The thresholds and the words are the
/// runtime's (`check_ttl` and `check_lease` in `idem-runtime/src/config.rs`), so that a literal
/// fails the build with the message a `Duration` expression gets as `Error::Config` at run time.
struct Minimum {
    value: Duration,
    why: &'static str,
}

/// `ttl`: a completed record always expires.
const TTL: DurationOption = DurationOption {
    name: "ttl",
    min: Some(Minimum {
        value: Duration::from_millis(1),
        why: "a completed record always expires, and stores expire in whole milliseconds",
    }),
};

/// `lease`: renewed every `lease / 3`, and the stores count in milliseconds.
const LEASE: DurationOption = DurationOption {
    name: "lease",
    min: Some(Minimum {
        value: Duration::from_millis(3),
        why: "a lease is renewed every lease / 3 while the body runs",
    }),
};

/// `wait`: zero rejects a concurrent duplicate at once.
const WAIT: DurationOption = DurationOption {
    name: "wait",
    min: None,
};

/// A duration option. A string literal is parsed here, so that a typo fails the build instead
/// of the first call; anything else is left to the type checker as a `Duration`.
fn parse_timing(input: ParseStream, option: &DurationOption) -> Result<Timing> {
    let name = option.name;
    let expr = input.parse::<Expr>()?;
    let lit = match expr {
        Expr::Lit(ExprLit {
            lit: Lit::Str(lit), ..
        }) => lit,
        Expr::Lit(ExprLit {
            lit: Lit::Int(lit), ..
        }) => {
            return Err(Error::new(
                lit.span(),
                format!(
                    "a bare number has no unit: write `{name} = \"{}s\"` or `\"{}ms\"` \
                     ({DURATION_EXAMPLES}, or a `Duration` expression)",
                    lit.base10_digits(),
                    lit.base10_digits(),
                ),
            ));
        }
        Expr::Lit(lit) => {
            return Err(Error::new_spanned(
                lit,
                format!("{DURATION_EXAMPLES}, or a `Duration` expression"),
            ));
        }
        expr => return Ok(Timing::Expr(expr)),
    };
    let value = humantime::parse_duration(&lit.value()).map_err(|error| {
        let why = match error {
            DurationError::UnknownUnit { unit, .. } if unit.is_empty() => "no unit".to_owned(),
            DurationError::UnknownUnit { unit, .. } => format!("unknown unit {unit:?}"),
            DurationError::NumberOverflow => "too large".to_owned(),
            DurationError::Empty => "empty".to_owned(),
            _ => "not a number followed by a unit".to_owned(),
        };
        Error::new(
            lit.span(),
            format!(
                "invalid duration {:?} ({why}): {DURATION_EXAMPLES}",
                lit.value()
            ),
        )
    })?;
    if let Some(min) = &option.min
        && value < min.value
    {
        return Err(Error::new(
            lit.span(),
            format!(
                "`{name}` must be at least {}: {}",
                humantime::format_duration(min.value),
                min.why
            ),
        ));
    }
    Ok(Timing::Literal {
        value,
        span: lit.span(),
    })
}

fn parse_cache_err(input: ParseStream) -> Result<CacheErr> {
    match input.parse::<Expr>()? {
        Expr::Lit(ExprLit {
            lit: Lit::Bool(flag),
            ..
        }) => Ok(if flag.value() {
            CacheErr::Every(flag.span())
        } else {
            CacheErr::Never
        }),
        Expr::Lit(lit) => Err(Error::new_spanned(
            lit,
            "expected `true`, `false` or a closure `|e: &E| -> bool` \
             that says which errors are permanent",
        )),
        predicate => Ok(CacheErr::Predicate(predicate)),
    }
}

/// `tx = conn`: the name of an argument.
fn parse_tx(input: ParseStream) -> Result<Ident> {
    let found = input.parse::<Expr>()?;
    if let Expr::Path(path) = &found
        && path.qself.is_none()
        && path.attrs.is_empty()
        && let Some(name) = path.path.get_ident()
    {
        return Ok(name.clone());
    }
    Err(Error::new_spanned(
        found,
        "expected the name of the argument that is the connection, such as `tx = conn` \
         (an argument `conn: &mut sqlx::PgConnection`, `&mut sqlx::SqliteConnection` or \
         `&mut sqlx::MySqlConnection`)",
    ))
}

/// Why `tx` and `abandoned` exclude each other.
const TX_AND_ABANDONED: &str = "`abandoned` does not apply with `tx`: a transactional attempt \
     never outlives its transaction (a crash rolls back the body's writes and the claim \
     together), so no attempt is ever abandoned; remove `abandoned`";

/// `abandoned = "rerun"` or `abandoned = "fail"`: the variant of `Abandoned` it names.
fn parse_abandoned(input: ParseStream) -> Result<Ident> {
    const EXPECTED: &str = "expected `abandoned = \"rerun\"` (run the body again, as the next \
         attempt) or `abandoned = \"fail\"` (fail with idem::Error::Abandoned until an operator \
         forgets or completes the key)";
    let found = input.parse::<Expr>()?;
    match &found {
        Expr::Lit(ExprLit {
            lit: Lit::Str(lit), ..
        }) => match lit.value().as_str() {
            "rerun" => Ok(Ident::new("Rerun", lit.span())),
            "fail" => Ok(Ident::new("Fail", lit.span())),
            _ => Err(Error::new(lit.span(), EXPECTED)),
        },
        _ => Err(Error::new_spanned(found, EXPECTED)),
    }
}

fn parse_scope(input: ParseStream) -> Result<LitStr> {
    if input.peek(LitStr) {
        let scope = input.parse::<LitStr>()?;
        if scope.value().is_empty() {
            return Err(Error::new(scope.span(), "the scope must not be empty"));
        }
        return Ok(scope);
    }
    let found = input.parse::<Expr>()?;
    Err(Error::new_spanned(
        found,
        "expected a string literal, such as `scope = \"billing::charge\"`: \
         the scope is part of every stored key, so it is fixed at compile time",
    ))
}

/// `crate = path`, or `crate = "path"` as in tokio's attributes.
fn parse_crate(input: ParseStream) -> Result<Path> {
    if input.peek(LitStr) {
        let lit = input.parse::<LitStr>()?;
        return lit.parse_with(Path::parse_mod_style).map_err(|_| {
            Error::new(
                lit.span(),
                "expected the path of the `idem` crate, such as `crate = my_app::idem`",
            )
        });
    }
    input.call(Path::parse_mod_style).map_err(|error| {
        Error::new(
            error.span(),
            "expected the path of the `idem` crate, such as `crate = my_app::idem`",
        )
    })
}
