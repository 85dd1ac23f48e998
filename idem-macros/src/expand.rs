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
    AttrStyle, Block, Error, FnArg, Ident, ItemFn, Pat, ReturnType, Signature, Type, parse_quote,
    parse_quote_spanned,
};

use crate::attr::{Args, CacheErr, Key, Timing, both};
use crate::signature::{Returns, TxArg, check_signature, not_a_function, tx_argument};

/// Expands `#[idempotent(args)] item`. Never fails: an error comes back as a
/// `compile_error!` beside the untouched function, so the rest of the crate still sees it.
///
/// The arguments and the function are checked apart, so that a mistake in each is reported;
/// the rule that needs both (`tx` names an argument) is checked once both are known good.
pub(crate) fn idempotent(args: TokenStream, item: TokenStream) -> TokenStream {
    let function = match syn::parse2::<ItemFn>(item.clone()) {
        Ok(function) => function,
        Err(error) => return with_error(item.clone(), not_a_function(item, error)),
    };
    let read =
        both(syn::parse2::<Args>(args), check_signature(&function)).and_then(|(args, ())| {
            let tx = tx_argument(args.tx.as_ref(), &function.sig)?;
            Ok((args, tx))
        });
    match read {
        Ok((args, tx)) => expand(args, function, tx),
        Err(error) => with_error(item, error),
    }
}

/// The original item with the error beside it.
fn with_error(item: TokenStream, error: Error) -> TokenStream {
    let error = error.into_compile_error();
    quote!(#item #error)
}

/// Generates the wrapped function, step by step: the call and its options, the type checks,
/// the body as a future, the runner that takes both, and the signature the caller sees.
fn expand(args: Args, function: ItemFn, tx: Option<TxArg>) -> TokenStream {
    let ItemFn {
        attrs,
        vis,
        sig,
        block,
        ..
    } = function;
    let krate = args.krate.clone().unwrap_or_else(|| parse_quote!(::idem));
    let private = quote!(#krate::__private);
    let (outer, inner): (Vec<_>, Vec<_>) = attrs
        .into_iter()
        .partition(|attr| matches!(attr.style, AttrStyle::Outer));

    // The body's own type, for the `let` that gives `?` and `return` their target type.
    let body_ty: Type = match &sig.output {
        ReturnType::Default => parse_quote!(()),
        ReturnType::Type(_, ty) => (**ty).clone(),
    };
    let returns = Returns::of(&body_ty);
    let caching = !matches!(args.cache_err, CacheErr::Never);

    let call = Ident::new("__idem_call", Span::mixed_site());
    let new_call = new_call(&private, &args, &sig.ident);
    let checks = type_checks(&private, &returns, caching);
    let body = body_future(&block, &body_ty, tx.as_ref());
    let runner = Runner::choose(&returns, &args.cache_err, tx.is_some());
    let run = run(
        &private,
        runner,
        &call,
        &args.cache_err,
        &returns,
        tx.as_ref(),
        body,
    );
    let sig = outer_signature(sig, &private, &returns, tx.as_ref());

    quote! {
        #(#outer)*
        #vis #sig {
            #(#inner)*
            #(#checks)*
            let #call = #new_call;
            #run
        }
    }
}

/// `__private::call(scope, key)` with the options the attribute sets (`ttl`, `lease`, `wait`,
/// `fingerprint`, `store`): the `Call` the runner runs. `name` is the function's name, for the
/// default scope `module::name`.
fn new_call(private: &TokenStream, args: &Args, name: &Ident) -> TokenStream {
    let scope = match &args.scope {
        Some(scope) => scope.to_token_stream(),
        None => {
            let name = name.unraw().to_string();
            quote!(::core::concat!(::core::module_path!(), "::", #name))
        }
    };
    let key = key(private, &args.key);
    let mut options = Vec::new();
    for (method, timing) in [
        ("ttl", &args.ttl),
        ("lease", &args.lease),
        ("wait", &args.wait),
    ] {
        if let Some(timing) = timing {
            let method = Ident::new(method, Span::call_site());
            let value = duration(private, timing);
            options.push(quote!(.#method(#value)));
        }
    }
    if let Some(fingerprint) = &args.fingerprint {
        options.push(quote_spanned!(fingerprint.span()=> .fingerprint(&(#fingerprint))));
    }
    if let Some(store) = &args.store {
        options.push(quote_spanned!(store.span()=> .store(#store)));
    }
    if let Some(policy) = &args.abandoned {
        options.push(quote!(.abandoned(#private::Abandoned::#policy)));
    }
    quote!(#private::call(#scope, #key) #(#options)*)
}

/// The key as a `String`: one value through `__private::key`, a tuple's parts through a
/// `KeyBuilder`. Spanned at the key's expression, so that a key that is not `Display` is
/// reported there.
fn key(private: &TokenStream, key: &Key) -> TokenStream {
    match key {
        Key::One(expr) => {
            let key = respan(path(private, "key"), expr.span());
            quote_spanned!(expr.span()=> #key(&(#expr)))
        }
        Key::Parts(parts) => {
            let parts = parts
                .iter()
                .map(|part| quote_spanned!(part.span()=> .part(&(#part))));
            quote!(#private::KeyBuilder::new() #(#parts)* .finish())
        }
    }
}

/// The span the runner call shares with the type check most likely to fail.
///
/// rustc drops a failed bound when an error at the same span already reported it, so an
/// unstorable type is reported on the type, the check's message first, rather than once more on
/// the attribute. With `cache_err` the error type has more to satisfy than the value type.
fn anchor(returns: &Returns<'_>, caching: bool) -> Span {
    match returns {
        Returns::Plain(ty) => ty.span(),
        Returns::Result { err: Some(err), .. } if caching => err.span(),
        Returns::Result { ok: Some(ok), .. } => ok.span(),
        Returns::Result { ok: None, .. } => Span::call_site(),
    }
}

/// Static checks on the user's types (`assert_storable`, `assert_error_type`,
/// `assert_cacheable_error`), with messages that say what to derive or implement. Each type is
/// respanned to a single token so that its span and the runner's [`anchor`] match.
fn type_checks(private: &TokenStream, returns: &Returns<'_>, caching: bool) -> Vec<TokenStream> {
    let check = |name: &str, ty: &Type| {
        let span = ty.span();
        let ty = respan(ty.to_token_stream(), span);
        let check = respan(path(private, name), span);
        quote_spanned!(span=> #check::<#ty>();)
    };
    let mut checks = Vec::new();
    match returns {
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
    checks
}

/// The body, wrapped in place under its own span: `async move { body }`, or with `tx` an async
/// closure that receives the connection under the argument's own name, so that the engine can
/// use it before and after the body. The `let` of type `body_ty` gives `?` and `return` their
/// target type.
fn body_future(block: &Block, body_ty: &Type, tx: Option<&TxArg>) -> TokenStream {
    let ret = Ident::new("__idem_ret", Span::mixed_site());
    match tx {
        None => quote_spanned! {block.span()=>
            async move {
                #[allow(clippy::let_and_return, clippy::let_unit_value, unused_braces)]
                let #ret: #body_ty = #block;
                #ret
            }
        },
        // The connection under the argument's own name; its type comes from the runner's bound
        // (`&mut` the connection `TxArgument` found, for any borrow the engine lends it), so
        // that an argument of another type is one error, at the argument.
        Some(TxArg {
            name, mutability, ..
        }) => quote_spanned! {block.span()=>
            async move |#mutability #name| {
                #[allow(clippy::let_and_return, clippy::let_unit_value, unused_braces)]
                let #ret: #body_ty = #block;
                #ret
            }
        },
    }
}

/// The `__private` function that runs the call: one variant per runner of the runtime, chosen
/// by [`Runner::choose`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Runner {
    /// `run_plain`: a plain `T`, returned as `Result<T, idem::Error>`.
    Plain,
    /// `run_plain_tx`: [`Plain`](Self::Plain) in transactional mode.
    PlainTx,
    /// `try_run_result`, then `lift`: a `Result` whose errors are never stored.
    Result,
    /// `try_run_result_tx`: [`Result`](Self::Result) in transactional mode.
    ResultTx,
    /// `run_result_caching`: a `Result` whose errors a predicate sorts into stored and released
    /// (`cache_err = true` is the predicate `cache_every_error`).
    Caching,
    /// `run_result_caching_tx`: [`Caching`](Self::Caching) in transactional mode, with a
    /// predicate.
    CachingTx,
    /// `run_result_storing_errors_tx`: `cache_err = true` in transactional mode, where every
    /// error is stored and no savepoint is needed.
    StoringErrorsTx,
}

impl Runner {
    /// The runner for a function that `returns` this, with this `cache_err`, in transactional
    /// mode or not. `cache_err` means nothing to a plain return type.
    pub(crate) fn choose(returns: &Returns<'_>, cache_err: &CacheErr, tx: bool) -> Runner {
        match (returns, cache_err, tx) {
            (Returns::Plain(_), _, false) => Runner::Plain,
            (Returns::Plain(_), _, true) => Runner::PlainTx,
            (Returns::Result { .. }, CacheErr::Never, false) => Runner::Result,
            (Returns::Result { .. }, CacheErr::Never, true) => Runner::ResultTx,
            (Returns::Result { .. }, CacheErr::Every(_) | CacheErr::Predicate(_), false) => {
                Runner::Caching
            }
            (Returns::Result { .. }, CacheErr::Predicate(_), true) => Runner::CachingTx,
            (Returns::Result { .. }, CacheErr::Every(_), true) => Runner::StoringErrorsTx,
        }
    }

    /// Its name in `__private`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Runner::Plain => "run_plain",
            Runner::PlainTx => "run_plain_tx",
            Runner::Result => "try_run_result",
            Runner::ResultTx => "try_run_result_tx",
            Runner::Caching => "run_result_caching",
            Runner::CachingTx => "run_result_caching_tx",
            Runner::StoringErrorsTx => "run_result_storing_errors_tx",
        }
    }

    /// Whether it takes the `cache_err` predicate, before the body.
    fn takes_predicate(self) -> bool {
        matches!(self, Runner::Caching | Runner::CachingTx)
    }

    /// Whether its `Result<R, idem::Error>` goes through `lift`, which turns the `idem::Error`
    /// into the function's own error type.
    fn lifts(self) -> bool {
        matches!(self, Runner::Result | Runner::ResultTx)
    }
}

/// The expression that runs the call: `runner(call, [connection,] [predicate,] body).await`,
/// through `lift` for [`Runner::Result`], and with `tx` inside the runtime's `with_tx!`. `body`
/// comes from [`body_future`].
fn run(
    private: &TokenStream,
    runner: Runner,
    call: &Ident,
    cache_err: &CacheErr,
    returns: &Returns<'_>,
    tx: Option<&TxArg>,
    body: TokenStream,
) -> TokenStream {
    let anchor = anchor(returns, !matches!(cache_err, CacheErr::Never));
    let function = respan(path(private, runner.name()), anchor);
    // The connection, checked at the argument's type (its tokens keep their spans, so that
    // the whole type is underlined): a wrong type is one error, there (the connection type is
    // a parameter of the check, not a projection of it, so that nothing else fails with it).
    let conn = tx.map(|TxArg { name, ty, .. }| {
        let span = ty.span();
        let check = respan(quote!(#private::TxArgument), span);
        quote_spanned!(span=> <#ty as #check<'_, _>>::connection(#name),)
    });
    let predicate = match cache_err {
        CacheErr::Every(span) if runner.takes_predicate() => {
            let every = quote_spanned!(*span=> #private::cache_every_error);
            Some(quote_spanned!(anchor=> #every,))
        }
        CacheErr::Predicate(predicate) if runner.takes_predicate() => {
            Some(quote_spanned!(anchor=> #predicate,))
        }
        _ => None,
    };
    let mut run = quote_spanned!(anchor=> #function(#call, #conn #predicate #body).await);
    if runner.lifts() {
        // Two calls, so that each bound is reported at its own type: the value type on the
        // runner, `From<idem::Error>` on `lift` at the error type.
        let err_span = match returns {
            Returns::Result { err: Some(err), .. } => err.span(),
            _ => Span::call_site(),
        };
        let lift = respan(path(private, "lift"), err_span);
        let result = Ident::new("__idem_result", err_span);
        run = quote_spanned!(err_span=> { let #result = #run; #lift(#result) });
    }
    // `tx` needs the `postgres` feature: without it, this macro of the runtime is one error
    // that names the feature, in place of the code that would use what the feature brings.
    match tx {
        None => run,
        Some(_) => quote!(#private::with_tx! { #run }),
    }
}

/// The signature the caller sees: a plain return type `T` becomes `Result<T, idem::Error>`,
/// and the argument `tx` names loses its `mut`, which belongs to the closure's parameter that
/// the body sees.
fn outer_signature(
    mut sig: Signature,
    private: &TokenStream,
    returns: &Returns<'_>,
    tx: Option<&TxArg>,
) -> Signature {
    if let Some(TxArg { name, .. }) = tx {
        for input in &mut sig.inputs {
            if let FnArg::Typed(typed) = input
                && let Pat::Ident(pat) = &mut *typed.pat
                && pat.ident == *name
            {
                pat.mutability = None;
            }
        }
    }
    if let Returns::Plain(ty) = returns {
        let arrow = match &sig.output {
            ReturnType::Type(arrow, _) => *arrow,
            ReturnType::Default => Default::default(),
        };
        let output = parse_quote_spanned! {ty.span()=>
            ::core::result::Result<#ty, #private::Error>
        };
        sig.output = ReturnType::Type(arrow, Box::new(output));
    }
    sig
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
