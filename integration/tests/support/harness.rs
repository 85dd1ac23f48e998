//! The command line of a `harness = false` test binary with one test: enough of libtest's for
//! `cargo test [filter]` and for cargo-nextest, which lists the tests (`--list --format terse`)
//! and then runs each by name (`--exact name`).

/// libtest options that take a value.
const WITH_VALUE: &[&str] = &[
    "--format",
    "--test-threads",
    "--color",
    "--skip",
    "--logfile",
    "--shuffle-seed",
    "-Z",
];

/// Runs `test`, named `name`, unless the command line lists the tests or filters it out.
pub fn run_single(name: &str, test: impl FnOnce()) {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |f: &str| args.iter().any(|a| a == f);
    let mut filters = Vec::new();
    let mut skips = Vec::new();
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        if arg == "--skip" {
            skips.extend(rest.next());
        } else if WITH_VALUE.contains(&arg.as_str()) {
            rest.next();
        } else if !arg.starts_with('-') {
            filters.push(arg);
        }
    }
    let matches = |pattern: &String| {
        if flag("--exact") {
            pattern == name
        } else {
            name.contains(pattern.as_str())
        }
    };
    let selected = (filters.is_empty() || filters.iter().any(|f| matches(f)))
        && !skips.iter().any(|s| matches(s))
        // The test is not #[ignore]d: a run of the ignored tests only has nothing to do.
        && !flag("--ignored");
    if flag("--list") {
        if selected {
            println!("{name}: test");
        }
        return;
    }
    if !selected {
        println!("running 0 tests");
        return;
    }
    println!("running 1 test");
    test();
    println!("test {name} ... ok");
}
