//! The compiler's view of `#[idempotent]`: `ui/pass` must build (and run their `main`), every
//! `ui/fail` case must fail with exactly the diagnostics in its `.stderr`.
//!
//! After a deliberate change to a message, regenerate with
//! `TRYBUILD=overwrite cargo test -p idem-integration --test ui` and review every changed `.stderr`.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/fail/*.rs");
}
