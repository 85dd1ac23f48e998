//! Unit tests of the parser and of the expansion's details. The whole expansion is covered by
//! the snapshots in `tests/expand.rs`, the compiler's view of it by the facade's UI tests.

use proc_macro2::TokenStream;

use crate::attr::{Args, CacheErr, Key, Timing};
use crate::expand;

fn parse(args: &str) -> syn::Result<Args> {
    let tokens: TokenStream = args.parse().expect("test input tokenizes");
    syn::parse2::<Args>(tokens)
}

fn error(args: &str) -> String {
    match parse(args) {
        Ok(_) => panic!("`{args}` should not parse"),
        Err(error) => error.to_string(),
    }
}

fn expand(args: &str, item: &str) -> String {
    let args: TokenStream = args.parse().expect("test args tokenize");
    let item: TokenStream = item.parse().expect("test item tokenizes");
    expand::idempotent(args, item).to_string()
}

fn literal(timing: Option<Timing>) -> std::time::Duration {
    match timing {
        Some(Timing::Literal { value, .. }) => value,
        _ => panic!("expected a duration literal"),
    }
}

#[test]
fn parses_every_option() {
    let args = parse(
        r#"key = (tenant, req.id), ttl = "24h", lease = "30s", wait = "0s",
           fingerprint = req, cache_err = true, scope = "billing", store = stores::main(),
           crate = my_app::idem,"#,
    )
    .unwrap();
    assert!(matches!(&args.key, Key::Parts(parts) if parts.len() == 2));
    assert_eq!(literal(args.ttl).as_secs(), 24 * 3600);
    assert_eq!(literal(args.lease).as_secs(), 30);
    assert!(literal(args.wait).is_zero());
    assert!(args.fingerprint.is_some());
    assert!(matches!(args.cache_err, CacheErr::Every(_)));
    assert_eq!(args.scope.unwrap().value(), "billing");
    assert!(args.store.is_some());
    assert_eq!(args.krate.unwrap().segments.len(), 2);
}

#[test]
fn only_key_is_required() {
    let args = parse("key = id").unwrap();
    assert!(matches!(args.key, Key::One(_)));
    assert!(args.ttl.is_none() && args.lease.is_none() && args.wait.is_none());
    assert!(matches!(args.cache_err, CacheErr::Never));
    assert!(args.krate.is_none() && args.scope.is_none() && args.store.is_none());
}

#[test]
fn options_take_expressions() {
    let args = parse(
        "key = format!(\"{a}-{b}\"), ttl = Duration::from_secs(60), \
         cache_err = |e: &MyError| e.permanent()",
    )
    .unwrap();
    assert!(matches!(args.ttl, Some(Timing::Expr(_))));
    assert!(matches!(args.cache_err, CacheErr::Predicate(_)));
    assert!(matches!(
        parse("key = id, cache_err = false").unwrap().cache_err,
        CacheErr::Never
    ));
    assert!(
        parse(r#"key = id, crate = "::my_app::idem""#)
            .unwrap()
            .krate
            .is_some()
    );
}

#[test]
fn missing_key_shows_how() {
    assert!(error("").contains("missing `key`"));
    assert!(error(r#"ttl = "1h""#).contains("#[idempotent(key = req.id)]"));
}

#[test]
fn unknown_option_lists_the_valid_ones() {
    assert_eq!(
        error("key = id, tll = \"1h\""),
        "unknown option `tll`, expected one of: key, ttl, lease, wait, fingerprint, cache_err, \
         abandoned, scope, store, tx, crate"
    );
    assert!(error("key = id, 42").contains("expected an option"));
}

#[test]
fn abandoned_is_rerun_or_fail_and_never_with_tx() {
    assert!(error(r#"key = id, abandoned = "retry""#).contains(r#"`abandoned = "rerun"`"#));
    assert!(error("key = id, abandoned = fail").contains(r#"`abandoned = "fail"`"#));
    assert!(
        error(r#"key = id, tx = conn, abandoned = "fail""#)
            .contains("`abandoned` does not apply with `tx`")
    );
}

#[test]
fn duplicate_option_is_an_error() {
    assert!(error(r#"key = a, ttl = "1h", ttl = "2h""#).contains("duplicate option `ttl`"));
    assert!(error("key = a, key = b").contains("duplicate option `key`"));
}

#[test]
fn duration_literals_are_checked() {
    assert!(error(r#"key = a, ttl = "24 parsecs""#).contains(r#"expected a duration such as"#));
    assert!(error(r#"key = a, ttl = "soon""#).contains("invalid duration \"soon\""));
    assert!(error("key = a, lease = 30").contains("a bare number has no unit"));
    assert!(error("key = a, wait = 1.5").contains("`Duration` expression"));
    assert!(error(r#"key = a, ttl = "0s""#).contains("`ttl` must be at least 1ms"));
    assert!(error(r#"key = a, lease = "0ms""#).contains("`lease` must be at least 3ms"));
    assert!(error(r#"key = a, lease = "2ms""#).contains("at least 3ms"));
    assert!(error(r#"key = a, ttl = "500us""#).contains("`ttl` must be at least 1ms"));
    assert!(parse(r#"key = a, lease = "3ms", ttl = "1ms""#).is_ok());
}

#[test]
fn other_values_are_checked() {
    assert!(
        error(r#"key = a, cache_err = "yes""#).contains("expected `true`, `false` or a closure")
    );
    assert!(error("key = a, scope = billing").contains("expected a string literal"));
    assert!(error(r#"key = a, scope = """#).contains("must not be empty"));
    assert!(error("key = ()").contains("the key is empty"));
    assert!(error("key = a, crate = 1").contains("expected the path of the `idem` crate"));
    assert!(error("key = a ttl = \"1h\"").contains("expected `,`"));
}

#[test]
fn durations_become_constants_in_their_unit() {
    let item = "async fn f() {}";
    let ttl = expand(r#"key = 1, ttl = "7d""#, item);
    assert!(ttl.contains("Duration :: from_millis (604800000)"), "{ttl}");
    let lease = expand(r#"key = 1, lease = "250ms""#, item);
    assert!(lease.contains("Duration :: from_millis (250)"), "{lease}");
    let wait = expand(r#"key = 1, wait = "1500us""#, item);
    assert!(wait.contains("Duration :: from_nanos (1500000)"), "{wait}");
}

#[test]
fn errors_keep_the_function() {
    for (args, item) in [
        ("ttl = \"1h\"", "async fn kept() {}"),
        ("key = 1", "fn kept() {}"),
        ("key = 1", "const fn kept() {}"),
        ("key = 1", "extern \"C\" fn kept() {}"),
    ] {
        let out = expand(args, item);
        assert!(out.contains("compile_error"), "{out}");
        assert!(out.contains("fn kept"), "{out}");
    }
    let out = expand("key = 1", "struct NotAFn;");
    assert!(out.contains("can only be used on an `async fn`"), "{out}");
    assert!(out.contains("struct NotAFn"), "{out}");
}

#[test]
fn argument_and_signature_errors_are_both_reported() {
    let out = expand("tll = 1", "fn sync() {}");
    assert!(out.contains("unknown option `tll`"), "{out}");
    assert!(out.contains("needs an `async fn`"), "{out}");
}

#[test]
fn signature_checks_come_in_a_useful_order() {
    assert!(expand("key = 1", "const async fn f() {}").contains("`const fn`"));
    assert!(expand("key = 1", "extern \"C\" fn f() {}").contains("`extern` fn"));
    assert!(expand("key = 1", "async unsafe fn f() {}").contains("run_plain"));
}

#[test]
fn result_detection_goes_by_the_last_segment() {
    let result = |ret: &str| expand("key = 1", &format!("async fn f() -> {ret} {{ body() }}"));
    assert!(result("Result<u8, E>").contains("try_run_result"));
    assert!(result("io::Result<u8>").contains("try_run_result"));
    assert!(result("std::result::Result<u8, E>").contains("assert_error_type :: < E >"));
    assert!(!result("io::Result<u8>").contains("assert_error_type"));
    assert!(result("Option<u8>").contains("run_plain"));
    assert!(result("Results<u8>").contains("run_plain"));
    assert!(result("<T as Tr>::Result").contains("run_plain"));
}

#[test]
fn plain_return_types_are_wrapped() {
    let out = expand("key = 1", "async fn f() -> u8 { 1 }");
    assert!(
        out.contains("-> :: core :: result :: Result < u8 , :: idem :: __private :: Error >"),
        "{out}"
    );
    let unit = expand("key = 1", "async fn f() {}");
    assert!(
        unit.contains("-> :: core :: result :: Result < () , :: idem :: __private :: Error >"),
        "{unit}"
    );
}

#[test]
fn cache_err_picks_the_runner() {
    let item = "async fn f() -> Result<u8, E> { Ok(1) }";
    let every = expand("key = 1, cache_err = true", item);
    assert!(
        every.contains(
            "run_result_caching (__idem_call , :: idem :: __private :: cache_every_error"
        ),
        "{every}"
    );
    assert!(every.contains("assert_cacheable_error :: < E >"), "{every}");
    let never = expand("key = 1, cache_err = false", item);
    assert!(
        never.contains("try_run_result (") && !never.contains("caching"),
        "{never}"
    );
    let closure = expand("key = 1, cache_err = |e: &E| e.permanent()", item);
    assert!(
        closure.contains("run_result_caching (__idem_call , | e : & E | e . permanent ()"),
        "{closure}"
    );
}

#[test]
fn scope_defaults_to_the_function_path() {
    let out = expand("key = 1", "async fn r#type() {}");
    assert!(out.contains(r#"module_path ! () , "::" , "type""#), "{out}");
    let out = expand(r#"key = 1, scope = "billing""#, "async fn f() {}");
    assert!(out.contains(r#"__private :: call ("billing""#), "{out}");
}

#[test]
fn inner_attributes_stay_at_the_top_of_the_body() {
    let out = expand(
        "key = 1",
        "#[doc = \"outer\"] async fn f() { #![allow(unused)] }",
    );
    let outer = out.find("doc").unwrap();
    let sig = out.find("async fn f").unwrap();
    let inner = out.find("# ! [allow (unused)]").unwrap();
    assert!(outer < sig && sig < inner, "{out}");
}

#[test]
fn tx_names_an_argument_and_excludes_store() {
    let args = parse("key = id, tx = conn").unwrap();
    assert_eq!(args.tx.unwrap().to_string(), "conn");
    for args in [
        "key = id, tx = conn, store = s",
        "key = id, store = s, tx = conn",
    ] {
        let message = error(args);
        assert!(
            message.contains("`tx` and `store` cannot be combined"),
            "{message}"
        );
    }
    assert!(error("key = id, tx = self.conn").contains("the name of the argument"));
    assert!(error("key = id, tx = conn, tx = c").contains("duplicate option `tx`"));
}

#[test]
fn tx_must_name_an_argument_of_the_function() {
    let out = expand(
        "key = id, tx = connection",
        "async fn f(conn: &mut PgConnection, id: u64) -> u64 { id }",
    );
    assert!(
        out.contains("must name an argument of the function")
            && out.contains("its arguments are: `conn`, `id`"),
        "{out}"
    );
    let out = expand("key = 1, tx = conn", "async fn f() -> u64 { 1 }");
    assert!(out.contains("the function has no arguments"), "{out}");
}

#[test]
fn every_broken_rule_between_options_is_reported() {
    let message = match syn::parse2::<Args>("tx = conn, store = s".parse().unwrap()) {
        Ok(_) => panic!("`tx` with `store` and no `key` should not parse"),
        Err(error) => error
            .into_iter()
            .map(|error| error.to_string())
            .collect::<Vec<_>>(),
    };
    assert_eq!(message.len(), 2, "{message:?}");
    assert!(message[0].contains("`tx` and `store` cannot be combined"));
    assert!(message[1].contains("missing `key`"));
}

#[test]
fn the_runner_follows_the_return_type_cache_err_and_tx() {
    use crate::expand::Runner;
    use crate::signature::Returns;

    let plain: syn::Type = syn::parse_quote!(u8);
    let result: syn::Type = syn::parse_quote!(Result<u8, E>);
    let never = CacheErr::Never;
    let every = CacheErr::Every(proc_macro2::Span::call_site());
    let predicate = CacheErr::Predicate(syn::parse_quote!(|e: &E| e.permanent()));
    for (ty, cache_err, tx, runner) in [
        (&plain, &never, false, "run_plain"),
        (&plain, &every, false, "run_plain"),
        (&plain, &never, true, "run_plain_tx"),
        (&result, &never, false, "try_run_result"),
        (&result, &never, true, "try_run_result_tx"),
        (&result, &every, false, "run_result_caching"),
        (&result, &predicate, false, "run_result_caching"),
        (&result, &predicate, true, "run_result_caching_tx"),
        (&result, &every, true, "run_result_storing_errors_tx"),
    ] {
        assert_eq!(
            Runner::choose(&Returns::of(ty), cache_err, tx).name(),
            runner
        );
    }
}

#[test]
fn tx_with_every_error_stored_needs_no_predicate() {
    let out = expand(
        "key = id, tx = conn, cache_err = true",
        "async fn f(conn: &mut PgConnection, id: u64) -> Result<u64, E> { Ok(id) }",
    );
    assert!(
        out.contains("run_result_storing_errors_tx (__idem_call , < & mut PgConnection")
            && !out.contains("cache_every_error"),
        "{out}"
    );
    assert!(out.contains("with_tx !"), "{out}");
}
