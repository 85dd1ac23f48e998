//! The function under the attribute, read before any code is generated: the rules it must
//! meet ([`not_a_function`], [`check_signature`], [`tx_argument`]) and what it returns
//! ([`Returns`]).
//!
//! Every rule here involves the function, so none of them can be checked on the attribute's
//! arguments alone (those rules are in `attr.rs`).

use quote::ToTokens;
use syn::ext::IdentExt;
use syn::{
    Error, FnArg, GenericArgument, Ident, ItemFn, Pat, PathArguments, ReturnType, Signature, Token,
    Type,
};

/// Why an item that is not an `fn` with a body cannot take the attribute: what it is instead,
/// at its keyword, or else syn's own error (a function with a syntax error, a bodiless one).
pub(crate) fn not_a_function(item: proc_macro2::TokenStream, error: Error) -> Error {
    let Ok(item) = syn::parse2::<syn::Item>(item) else {
        return error;
    };
    let (span, what) = match &item {
        syn::Item::Struct(s) => (s.struct_token.span, "a struct"),
        syn::Item::Enum(e) => (e.enum_token.span, "an enum"),
        syn::Item::Union(u) => (u.union_token.span, "a union"),
        syn::Item::Impl(i) => (
            i.impl_token.span,
            "an impl block (put it on each `async fn` inside)",
        ),
        syn::Item::Trait(t) => (
            t.trait_token.span,
            "a trait (put it on the `async fn`s of an impl)",
        ),
        syn::Item::Mod(m) => (m.mod_token.span, "a module"),
        syn::Item::Const(c) => (c.const_token.span, "a const"),
        syn::Item::Static(s) => (s.static_token.span, "a static"),
        syn::Item::Type(t) => (t.type_token.span, "a type alias"),
        syn::Item::Use(u) => (u.use_token.span, "a use declaration"),
        _ => return error,
    };
    Error::new(
        span,
        format!("#[idempotent] can only be used on an `async fn`, not on {what}"),
    )
}

/// Rejects the functions the attribute cannot wrap, checked in the order that gives the most
/// useful message: `const` first (an `async fn` can't be `const` anyway), then `extern`, then
/// a missing `async`.
pub(crate) fn check_signature(function: &ItemFn) -> syn::Result<()> {
    let sig = &function.sig;
    if let Some(constness) = &sig.constness {
        return Err(Error::new(
            constness.span,
            "#[idempotent] can't be used on a `const fn`: an idempotent call reads and writes \
             its store at run time; remove `const` and make it an `async fn`",
        ));
    }
    if let Some(abi) = &sig.abi {
        return Err(Error::new(
            abi.extern_token.span,
            "#[idempotent] can't be used on an `extern` fn: remove the ABI and make it an \
             `async fn`",
        ));
    }
    if sig.asyncness.is_none() && rewritten_by_async_trait(sig) {
        return Err(Error::new(
            sig.fn_token.span,
            "#[idempotent] sees this method after #[async_trait] rewrote it into a `fn` \
             returning `Pin<Box<dyn Future>>`, which it cannot wrap; native `async fn` in \
             traits (Rust 1.75+) works with #[idempotent] without #[async_trait], or keep \
             #[async_trait] and put #[idempotent] on an inherent `async fn` that this method \
             calls",
        ));
    }
    if sig.asyncness.is_none() {
        return Err(Error::new(
            sig.fn_token.span,
            "#[idempotent] needs an `async fn`: a call may wait for the store or for a \
             concurrent call with the same key; write `async fn`",
        ));
    }
    Ok(())
}

/// Whether `sig` is an `async fn` that `#[async_trait]` (expanded first, on the impl) turned
/// into a `fn` returning a boxed future: it names its lifetime `'async_trait`.
fn rewritten_by_async_trait(sig: &Signature) -> bool {
    let lifetimes = sig.generics.lifetimes().map(|l| &l.lifetime);
    let returned = match &sig.output {
        ReturnType::Type(_, ty) => ty.to_token_stream().to_string(),
        ReturnType::Default => String::new(),
    };
    lifetimes.into_iter().any(|l| l.ident == "async_trait") || returned.contains("'async_trait")
}

/// The argument `tx = name` names.
pub(crate) struct TxArg {
    pub(crate) name: Ident,
    pub(crate) mutability: Option<Token![mut]>,
    pub(crate) ty: Type,
}

/// Finds the argument that `tx = name` names in `sig`, or says which arguments there are.
/// `None` without `tx`.
pub(crate) fn tx_argument(tx: Option<&Ident>, sig: &Signature) -> syn::Result<Option<TxArg>> {
    let Some(tx) = tx else {
        return Ok(None);
    };
    let mut names = Vec::new();
    for input in &sig.inputs {
        match input {
            FnArg::Receiver(_) => names.push("self".to_owned()),
            FnArg::Typed(typed) => match &*typed.pat {
                Pat::Ident(pat) if pat.ident == *tx && pat.subpat.is_none() => {
                    return Ok(Some(TxArg {
                        name: pat.ident.clone(),
                        mutability: pat.mutability,
                        ty: (*typed.ty).clone(),
                    }));
                }
                Pat::Ident(pat) => names.push(pat.ident.unraw().to_string()),
                pat => names.push(pat.to_token_stream().to_string()),
            },
        }
    }
    let listed = if names.is_empty() {
        "the function has no arguments".to_owned()
    } else {
        let names: Vec<String> = names.iter().map(|name| format!("`{name}`")).collect();
        format!("its arguments are: {}", names.join(", "))
    };
    Err(Error::new(
        tx.span(),
        format!(
            "`tx = {tx}` must name an argument of the function: the `&mut sqlx::PgConnection`, \
             `&mut sqlx::SqliteConnection` or `&mut sqlx::MySqlConnection` the record is written \
             through; {listed}"
        ),
    ))
}

/// What the function returns, as far as the syntax tells.
pub(crate) enum Returns<'a> {
    /// A `Result`, by the last segment of its path (`io::Result<T>` too). The `Ok` type is
    /// known when there are type arguments; the error type only when there are two.
    Result {
        ok: Option<&'a Type>,
        err: Option<&'a Type>,
    },
    /// Anything else, `()` included: the function will return `Result<T, idem::Error>`.
    Plain(&'a Type),
}

impl<'a> Returns<'a> {
    /// Classifies `ty`, the declared return type (`()` when there is none).
    pub(crate) fn of(ty: &'a Type) -> Self {
        let mut inner = ty;
        while let Type::Group(group) = inner {
            inner = &group.elem;
        }
        let segment = match inner {
            Type::Path(path) if path.qself.is_none() => path.path.segments.last(),
            _ => None,
        };
        let Some(segment) = segment.filter(|segment| segment.ident == "Result") else {
            return Returns::Plain(ty);
        };
        let mut types = match &segment.arguments {
            PathArguments::AngleBracketed(args) => args
                .args
                .iter()
                .filter_map(|arg| match arg {
                    GenericArgument::Type(ty) => Some(ty),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        }
        .into_iter();
        let ok = types.next();
        let err = types.next().filter(|_| types.next().is_none());
        Returns::Result { ok, err }
    }
}
