//! Code generation: an `async fn` in, the same `async fn` out, its body run through
//! `__private::run_*` under the key computed from its arguments.
//!
//! The body is wrapped in place (`async move { body }`, built under the body's span) rather
//! than moved into a new function, so that arguments may borrow (no `'static`), generics and
//! `self` keep working unchanged, and a type error in the body points at the body.

use proc_macro2::{Group, Literal, Span, TokenStream, TokenTree};
use quote::{ToTokens, quote, quote_spanned};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{
    AttrStyle, Error, FnArg, GenericArgument, Ident, ItemFn, Pat, PathArguments, ReturnType, Token,
    Type, parse_quote, parse_quote_spanned,
};

use crate::attr::{Args, CacheErr, Key, Timing};

/// Expands `#[idempotent(args)] item`. Never fails: an error comes back as a
/// `compile_error!` beside the untouched function, so the rest of the crate still sees it.
pub(crate) fn idempotent(args: TokenStream, item: TokenStream) -> TokenStream {
    let function = match syn::parse2::<ItemFn>(item.clone()) {
        Ok(function) => function,
        Err(error) => return with_error(item.clone(), not_a_function(item, error)),
    };
    let args = syn::parse2::<Args>(args);
    let checked = check_signature(&function);
    match (args, checked) {
        (Ok(args), Ok(())) => match tx_argument(&args, &function) {
            Ok(tx) => expand(args, function, tx),
            Err(error) => with_error(item, error),
        },
        (Err(mut error), Err(other)) => {
            error.combine(other);
            with_error(item, error)
        }
        (Err(error), Ok(())) | (Ok(_), Err(error)) => with_error(item, error),
    }
}

/// Why an item that is not an `fn` with a body cannot take the attribute: what it is instead,
/// at its keyword, or else syn's own error (a function with a syntax error, a bodiless one).
fn not_a_function(item: TokenStream, error: Error) -> Error {
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

/// The original item with the error beside it.
fn with_error(item: TokenStream, error: Error) -> TokenStream {
    let error = error.into_compile_error();
    quote!(#item #error)
}

/// Rejects the functions the attribute cannot wrap, checked in the order that gives the most
/// useful message: `const` first (an `async fn` can't be `const` anyway), then `extern`, then
/// a missing `async`.
fn check_signature(function: &ItemFn) -> syn::Result<()> {
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
fn rewritten_by_async_trait(sig: &syn::Signature) -> bool {
    let lifetimes = sig.generics.lifetimes().map(|l| &l.lifetime);
    let returned = match &sig.output {
        ReturnType::Type(_, ty) => ty.to_token_stream().to_string(),
        ReturnType::Default => String::new(),
    };
    lifetimes.into_iter().any(|l| l.ident == "async_trait") || returned.contains("'async_trait")
}

/// The argument `tx = name` names.
struct TxArg {
    name: Ident,
    mutability: Option<Token![mut]>,
    ty: Type,
}

/// Finds the argument of `tx = name`, or says which arguments there are.
fn tx_argument(args: &Args, function: &ItemFn) -> syn::Result<Option<TxArg>> {
    let Some(tx) = &args.tx else {
        return Ok(None);
    };
    let mut names = Vec::new();
    for input in &function.sig.inputs {
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
            "`tx = {tx}` must name an argument of the function: the `&mut sqlx::PgConnection` \
             the record is written through; {listed}"
        ),
    ))
}

/// What the function returns, as far as the syntax tells.
enum Returns<'a> {
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
    fn of(ty: &'a Type) -> Self {
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

fn expand(args: Args, function: ItemFn, tx: Option<TxArg>) -> TokenStream {
    let ItemFn {
        attrs,
        vis,
        mut sig,
        block,
        ..
    } = function;
    // The argument `tx` names is only handed to the runner: a `mut` belongs to the closure's
    // parameter, which the body sees.
    if let Some(TxArg { name, .. }) = &tx {
        for input in &mut sig.inputs {
            if let FnArg::Typed(typed) = input
                && let Pat::Ident(pat) = &mut *typed.pat
                && pat.ident == *name
            {
                pat.mutability = None;
            }
        }
    }
    let krate = args.krate.unwrap_or_else(|| parse_quote!(::idem));
    let private = quote!(#krate::__private);
    let (outer, inner): (Vec<_>, Vec<_>) = attrs
        .into_iter()
        .partition(|attr| matches!(attr.style, AttrStyle::Outer));

    let call = Ident::new("__idem_call", Span::mixed_site());
    let ret = Ident::new("__idem_ret", Span::mixed_site());

    // The body's own type, for the `let` that gives `?` and `return` their target type.
    let body_ty: Type = match &sig.output {
        ReturnType::Default => parse_quote!(()),
        ReturnType::Type(_, ty) => (**ty).clone(),
    };
    let returns = Returns::of(&body_ty);

    let scope = match &args.scope {
        Some(scope) => scope.to_token_stream(),
        None => {
            let name = sig.ident.unraw().to_string();
            quote!(::core::concat!(::core::module_path!(), "::", #name))
        }
    };
    // Spanned at the key's expression, so that a key that is not `Display` is reported there.
    let key = match &args.key {
        Key::One(expr) => {
            let key = respan(path(&private, "key"), expr.span());
            quote_spanned!(expr.span()=> #key(&(#expr)))
        }
        Key::Parts(parts) => {
            let parts = parts
                .iter()
                .map(|part| quote_spanned!(part.span()=> .part(&(#part))));
            quote!(#private::KeyBuilder::new() #(#parts)* .finish())
        }
    };

    let mut options = Vec::new();
    for (method, timing) in [
        ("ttl", &args.ttl),
        ("lease", &args.lease),
        ("wait", &args.wait),
    ] {
        if let Some(timing) = timing {
            let method = Ident::new(method, Span::call_site());
            let value = duration(&private, timing);
            options.push(quote!(.#method(#value)));
        }
    }
    if let Some(fingerprint) = &args.fingerprint {
        options.push(quote_spanned!(fingerprint.span()=> .fingerprint(&(#fingerprint))));
    }
    if let Some(store) = &args.store {
        options.push(quote_spanned!(store.span()=> .store(#store)));
    }

    // Static checks on the user's types, with messages that say what to derive or implement.
    // rustc drops a failed bound when an error at the same span already reported it, so the
    // runner call shares the span of the check most likely to fail: an unstorable type is then
    // reported on the type, check's message first, rather than once more on the attribute.
    // Checked types are respanned to a single token so that their span and the runner's match.
    let caching = !matches!(args.cache_err, CacheErr::Never);
    let anchor = match &returns {
        Returns::Plain(ty) => ty.span(),
        // With `cache_err` the error type has more to satisfy than the value type.
        Returns::Result { err: Some(err), .. } if caching => err.span(),
        Returns::Result { ok: Some(ok), .. } => ok.span(),
        Returns::Result { ok: None, .. } => Span::call_site(),
    };
    let check = |name: &str, ty: &Type| {
        let span = ty.span();
        let ty = respan(ty.to_token_stream(), span);
        let check = respan(path(&private, name), span);
        quote_spanned!(span=> #check::<#ty>();)
    };
    let mut checks = Vec::new();
    match &returns {
        Returns::Result { ok, err } => {
            if let Some(ok) = ok {
                checks.push(check("assert_storable", ok));
            }
            if let Some(err) = err {
                checks.push(check("assert_error_type", err));
                if caching {
                    checks.push(check("assert_cacheable_error", err));
                }
            }
        }
        Returns::Plain(ty) => checks.push(check("assert_storable", ty)),
    }

    // With `tx`, the body becomes an async closure that receives the connection under the
    // argument's own name, so that the engine can use it before and after the body.
    let body = match &tx {
        None => quote_spanned! {block.span()=>
            async move {
                #[allow(clippy::let_and_return, clippy::let_unit_value, unused_braces)]
                let #ret: #body_ty = #block;
                #ret
            }
        },
        Some(TxArg {
            name, mutability, ..
        }) => quote_spanned! {block.span()=>
            async move |#mutability #name: &mut #private::PgConnection| {
                #[allow(clippy::let_and_return, clippy::let_unit_value, unused_braces)]
                let #ret: #body_ty = #block;
                #ret
            }
        },
    };
    // The connection, checked at the argument's type (its tokens keep their spans, so that
    // the whole type is underlined): a wrong type is one error, there.
    let conn = tx.as_ref().map(|TxArg { name, ty, .. }| {
        let span = ty.span();
        let check = respan(quote!(#private::TxConnection), span);
        quote_spanned!(span=> <#ty as #check<'_>>::connection(#name),)
    });
    let suffix = if tx.is_some() { "_tx" } else { "" };

    let runner = |name: &str| respan(path(&private, &format!("{name}{suffix}")), anchor);
    let run = match (&returns, &args.cache_err) {
        (Returns::Plain(ty), _) => {
            let arrow = match &sig.output {
                ReturnType::Type(arrow, _) => *arrow,
                ReturnType::Default => Default::default(),
            };
            let output = parse_quote_spanned! {ty.span()=>
                ::core::result::Result<#ty, #private::Error>
            };
            sig.output = ReturnType::Type(arrow, Box::new(output));
            let runner = runner("run_plain");
            quote_spanned!(anchor=> #runner(#call, #conn #body).await)
        }
        (Returns::Result { err, .. }, CacheErr::Never) => {
            // Two calls, so that each bound is reported at its own type: the value type on
            // the runner, `From<idem::Error>` on `lift` at the error type.
            let runner = runner("try_run_result");
            let err_span = err.as_ref().map_or_else(Span::call_site, Spanned::span);
            let lift = respan(path(&private, "lift"), err_span);
            let result = Ident::new("__idem_result", err_span);
            let run = quote_spanned!(anchor=> #runner(#call, #conn #body).await);
            quote_spanned!(err_span=> { let #result = #run; #lift(#result) })
        }
        // Every error stored: in transactional mode, no savepoint is needed.
        (Returns::Result { .. }, CacheErr::Every(_)) if tx.is_some() => {
            let runner = runner("run_result_storing_errors");
            quote_spanned!(anchor=> #runner(#call, #conn #body).await)
        }
        (Returns::Result { .. }, CacheErr::Every(span)) => {
            let runner = runner("run_result_caching");
            let every = quote_spanned!(*span=> #private::cache_every_error);
            quote_spanned!(anchor=> #runner(#call, #conn #every, #body).await)
        }
        (Returns::Result { .. }, CacheErr::Predicate(predicate)) => {
            let runner = runner("run_result_caching");
            quote_spanned!(anchor=> #runner(#call, #conn #predicate, #body).await)
        }
    };
    // `tx` needs the `postgres` feature: without it, this macro of the runtime is one error
    // that names the feature, in place of the code that would use what the feature brings.
    let run = match &tx {
        None => run,
        Some(_) => quote!(#private::with_tx! { #run }),
    };

    quote! {
        #(#outer)*
        #vis #sig {
            #(#inner)*
            #(#checks)*
            let #call = #private::call(#scope, #key) #(#options)*;
            #run
        }
    }
}

/// A duration option as an expression of type `Duration`: literals as a constant in the
/// coarsest exact unit, expressions as written (the type checker points at them if they are
/// not a `Duration`).
fn duration(private: &TokenStream, timing: &Timing) -> TokenStream {
    match timing {
        Timing::Expr(expr) => expr.to_token_stream(),
        Timing::Literal { value, span } => {
            let nanos = value.as_nanos();
            if nanos % 1_000_000 == 0 {
                if let Ok(millis) = u64::try_from(nanos / 1_000_000) {
                    let millis = unsuffixed(millis, *span);
                    return quote_spanned!(*span=> #private::Duration::from_millis(#millis));
                }
            } else if let Ok(nanos) = u64::try_from(nanos) {
                let nanos = unsuffixed(nanos, *span);
                return quote_spanned!(*span=> #private::Duration::from_nanos(#nanos));
            }
            let secs = unsuffixed(value.as_secs(), *span);
            let subsec = unsuffixed(u64::from(value.subsec_nanos()), *span);
            quote_spanned!(*span=> #private::Duration::new(#secs, #subsec))
        }
    }
}

fn unsuffixed(value: u64, span: Span) -> Literal {
    let mut literal = Literal::u64_unsuffixed(value);
    literal.set_span(span);
    literal
}

/// `private::name`.
fn path(private: &TokenStream, name: &str) -> TokenStream {
    let name = Ident::new(name, Span::call_site());
    quote!(#private::#name)
}

/// `tokens` with every span set to `span`, inside groups too.
fn respan(tokens: TokenStream, span: Span) -> TokenStream {
    tokens
        .into_iter()
        .map(|mut token| {
            if let TokenTree::Group(group) = &token {
                let mut respanned = Group::new(group.delimiter(), respan(group.stream(), span));
                respanned.set_span(span);
                token = TokenTree::Group(respanned);
            } else {
                token.set_span(span);
            }
            token
        })
        .collect()
}
