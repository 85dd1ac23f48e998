//! The arguments of `#[idempotent(...)]`, parsed into [`Args`].
//!
//! Parsed by hand, option by option, so that every mistake gets its own message on the
//! offending token: an unknown option lists the valid ones, a duplicate points at the second
//! occurrence, a bad duration literal says what a duration looks like.

use std::time::Duration;

use humantime::DurationError;

use proc_macro2::Span;
use syn::ext::IdentExt;
use syn::parse::{Parse, ParseStream};
use syn::{Error, Expr, ExprLit, Ident, Lit, LitStr, Path, Result, Token};

mod kw {
    syn::custom_keyword!(key);
    syn::custom_keyword!(ttl);
    syn::custom_keyword!(lease);
    syn::custom_keyword!(wait);
    syn::custom_keyword!(fingerprint);
    syn::custom_keyword!(cache_err);
    syn::custom_keyword!(scope);
    syn::custom_keyword!(store);
    syn::custom_keyword!(tx);
}

/// Every option, in the order the documentation lists them.
const OPTIONS: &str = "key, ttl, lease, wait, fingerprint, cache_err, scope, store, tx, crate";

/// What a duration literal looks like, for error messages.
const DURATION_EXAMPLES: &str = r#"expected a duration such as "250ms", "30s", "24h" or "7d""#;

/// The shortest lease: it is renewed every `lease / 3`, and the stores count in milliseconds.
const MIN_LEASE: Duration = Duration::from_millis(3);

/// The parsed arguments of one `#[idempotent(...)]` attribute.
pub(crate) struct Args {
    pub(crate) key: Key,
    pub(crate) ttl: Option<Timing>,
    pub(crate) lease: Option<Timing>,
    pub(crate) wait: Option<Timing>,
    pub(crate) fingerprint: Option<Expr>,
    pub(crate) cache_err: CacheErr,
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

/// The options seen so far; [`Args`] once `key` is known to be there.
#[derive(Default)]
struct Builder {
    key: Option<Key>,
    ttl: Option<Timing>,
    lease: Option<Timing>,
    wait: Option<Timing>,
    fingerprint: Option<Expr>,
    cache_err: Option<CacheErr>,
    scope: Option<LitStr>,
    store: Option<Expr>,
    tx: Option<Ident>,
    krate: Option<Path>,
}

/// Why `tx` and `store` exclude each other.
const TX_AND_STORE: &str = "`tx` and `store` cannot be combined: with `tx`, the record is written \
     through the connection's transaction, in the table of the configured PostgresStore (or \
     `public.idem_records`); remove one of them";

impl Parse for Args {
    fn parse(input: ParseStream) -> Result<Self> {
        let mut args = Builder::default();
        while !input.is_empty() {
            parse_option(input, &mut args)?;
            if input.is_empty() {
                break;
            }
            input.parse::<Token![,]>()?;
        }
        let Some(key) = args.key else {
            return Err(Error::new(
                Span::call_site(),
                "missing `key`: #[idempotent] needs the idempotency key of each call, \
                 built from the arguments, e.g. `#[idempotent(key = req.id)]`",
            ));
        };
        Ok(Args {
            key,
            ttl: args.ttl,
            lease: args.lease,
            wait: args.wait,
            fingerprint: args.fingerprint,
            cache_err: args.cache_err.unwrap_or(CacheErr::Never),
            scope: args.scope,
            store: args.store,
            tx: args.tx,
            krate: args.krate,
        })
    }
}

/// Parses one `name = value` pair into its slot of `args`.
fn parse_option(input: ParseStream, args: &mut Builder) -> Result<()> {
    if input.peek(kw::key) {
        let name = input.parse::<kw::key>()?;
        let slot = vacant(&mut args.key, name.span, "key")?;
        input.parse::<Token![=]>()?;
        *slot = Some(parse_key(input)?);
    } else if input.peek(kw::ttl) {
        let name = input.parse::<kw::ttl>()?;
        let slot = vacant(&mut args.ttl, name.span, "ttl")?;
        input.parse::<Token![=]>()?;
        *slot = Some(parse_timing(input, "ttl", Duration::from_millis(1))?);
    } else if input.peek(kw::lease) {
        let name = input.parse::<kw::lease>()?;
        let slot = vacant(&mut args.lease, name.span, "lease")?;
        input.parse::<Token![=]>()?;
        *slot = Some(parse_timing(input, "lease", MIN_LEASE)?);
    } else if input.peek(kw::wait) {
        let name = input.parse::<kw::wait>()?;
        let slot = vacant(&mut args.wait, name.span, "wait")?;
        input.parse::<Token![=]>()?;
        *slot = Some(parse_timing(input, "wait", Duration::ZERO)?);
    } else if input.peek(kw::fingerprint) {
        let name = input.parse::<kw::fingerprint>()?;
        let slot = vacant(&mut args.fingerprint, name.span, "fingerprint")?;
        input.parse::<Token![=]>()?;
        *slot = Some(input.parse()?);
    } else if input.peek(kw::cache_err) {
        let name = input.parse::<kw::cache_err>()?;
        let slot = vacant(&mut args.cache_err, name.span, "cache_err")?;
        input.parse::<Token![=]>()?;
        *slot = Some(parse_cache_err(input)?);
    } else if input.peek(kw::scope) {
        let name = input.parse::<kw::scope>()?;
        let slot = vacant(&mut args.scope, name.span, "scope")?;
        input.parse::<Token![=]>()?;
        *slot = Some(parse_scope(input)?);
    } else if input.peek(kw::store) {
        let name = input.parse::<kw::store>()?;
        if args.tx.is_some() {
            return Err(Error::new(name.span, TX_AND_STORE));
        }
        let slot = vacant(&mut args.store, name.span, "store")?;
        input.parse::<Token![=]>()?;
        *slot = Some(input.parse()?);
    } else if input.peek(kw::tx) {
        let name = input.parse::<kw::tx>()?;
        if args.store.is_some() {
            return Err(Error::new(name.span, TX_AND_STORE));
        }
        let slot = vacant(&mut args.tx, name.span, "tx")?;
        input.parse::<Token![=]>()?;
        *slot = Some(parse_tx(input)?);
    } else if input.peek(Token![crate]) {
        let name = input.parse::<Token![crate]>()?;
        let slot = vacant(&mut args.krate, name.span, "crate")?;
        input.parse::<Token![=]>()?;
        *slot = Some(parse_crate(input)?);
    } else if input.peek(Ident::peek_any) {
        let name = input.call(Ident::parse_any)?;
        return Err(Error::new(
            name.span(),
            format!("unknown option `{name}`, expected one of: {OPTIONS}"),
        ));
    } else {
        return Err(input.error(format!(
            "expected an option such as `key = req.id`, one of: {OPTIONS}"
        )));
    }
    Ok(())
}

/// The slot of an option that has not been given yet, or an error on the repeated name.
fn vacant<'a, T>(slot: &'a mut Option<T>, name: Span, option: &str) -> Result<&'a mut Option<T>> {
    if slot.is_some() {
        return Err(Error::new(
            name,
            format!("duplicate option `{option}`: each option can be given once"),
        ));
    }
    Ok(slot)
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

/// A duration option. A string literal is parsed here, so that a typo fails the build instead
/// of the first call; anything else is left to the type checker as a `Duration`.
fn parse_timing(input: ParseStream, option: &str, min: Duration) -> Result<Timing> {
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
                    "a bare number has no unit: write `{option} = \"{}s\"` or `\"{}ms\"` \
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
    if value < min {
        let why = match option {
            "lease" => "at least 3ms: a lease is renewed every lease / 3 while the body runs",
            _ => {
                "at least 1ms: a completed record always expires, and stores expire in whole milliseconds"
            }
        };
        return Err(Error::new(lit.span(), format!("`{option}` must be {why}")));
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
         (an argument `conn: &mut sqlx::PgConnection`)",
    ))
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
