//! Every text that tells users what to put in Cargo.toml names the published package, `idem-fn`,
//! at the workspace's version: the crate named `idem` on crates.io is someone else's. Scans the
//! sources, the docs and the UI snapshots, so that no message can drift again.

use std::path::{Path, PathBuf};

/// The files whose text reaches users: sources (messages, rustdoc), docs, compile-error snapshots.
fn texts(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("a readable directory") {
        let path = entry.expect("a directory entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if path.is_dir() {
            if !matches!(name, "target" | ".git" | "node_modules") {
                texts(&path, found);
            }
        } else if [".rs", ".md", ".stderr"]
            .iter()
            .any(|ext| name.ends_with(ext))
        {
            found.push(path);
        }
    }
}

/// The version a Cargo.toml line of a user names: `0.2` for `0.2.0`.
fn minor_version() -> &'static str {
    let version = env!("CARGO_PKG_VERSION");
    version.rsplit_once('.').map_or(version, |(minor, _)| minor)
}

/// What stands right after `name = ` on `line`, for each place it does: a dependency line.
fn dependency_values<'a>(line: &'a str, name: &str) -> Vec<&'a str> {
    let mut values = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find(name) {
        let before = rest[..at].chars().next_back();
        let after = rest[at + name.len()..].trim_start();
        rest = &rest[at + name.len()..];
        // `idem` inside `idem-fn`, `idem_runtime` or `idem-macros` is not the name itself.
        if before.is_some_and(|c| c.is_alphanumeric() || c == '-' || c == '_') {
            continue;
        }
        if let Some(value) = after.strip_prefix('=') {
            values.push(value.trim_start());
        }
    }
    values
}

/// The version a dependency value names: `"0.2"` or `{ version = "0.2", … }`, escaped or not.
fn version_of(value: &str) -> Option<String> {
    let value = value.replace("\\\"", "\"");
    let start = match value.strip_prefix('"') {
        Some(_) => 1,
        None => value.find("version")? + value[value.find("version")?..].find('"')? + 1,
    };
    let end = start + value[start..].find('"')?;
    Some(value[start..end].to_owned())
}

#[test]
fn texts_name_the_published_package_at_this_version() {
    // The workspace: this package is one of its folders.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace holds this package");
    let mut files = Vec::new();
    texts(root, &mut files);
    assert!(
        files.len() > 50,
        "the scan found only {} files under {}",
        files.len(),
        root.display()
    );
    let this_file = Path::new(file!()).file_name().unwrap();
    let mut wrong = Vec::new();
    let mut named = 0;
    for file in &files {
        if file.file_name() == Some(this_file) {
            continue;
        }
        let text = std::fs::read_to_string(file).unwrap_or_default();
        for (number, line) in text.lines().enumerate() {
            let place = format!("{}:{}: {}", file.display(), number + 1, line.trim());
            for value in dependency_values(line, "idem") {
                // `idem = { package = "idem-fn", … }` renames the right package.
                let names_a_version = value.starts_with('{') || value.starts_with('"');
                if (names_a_version || value.starts_with("\\\"")) && !line.contains("package") {
                    wrong.push(format!("names the crate `idem`: {place}"));
                }
            }
            for value in dependency_values(line, "idem-fn") {
                // A version computed by a format string (`{version}`) is checked where it is
                // computed (`needs_feature` in idem-runtime's error.rs and its tests).
                if let Some(version) = version_of(value).filter(|v| !v.starts_with('{')) {
                    named += 1;
                    if version != minor_version() {
                        wrong.push(format!(
                            "names idem-fn {version}, not {}: {place}",
                            minor_version()
                        ));
                    }
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // The messages that name the package are found (the scan reads what it should).
    assert!(named >= 2, "only {named} lines name idem-fn with a version");
}

#[test]
fn the_scan_tells_right_from_wrong() {
    // Built, so that no line of this file is itself a wrong dependency line.
    let wrong = format!("{} = \"0.1\"", "idem");
    assert_eq!(dependency_values(&wrong, "idem"), [r#""0.1""#]);
    assert_eq!(
        dependency_values(r#"idem-fn = { version = "0.2" }"#, "idem").len(),
        0
    );
    assert_eq!(
        version_of(r#"{ version = \"0.1\", features = [\"postgres\"] }"#).as_deref(),
        Some("0.1")
    );
    assert_eq!(version_of(r#""0.2""#).as_deref(), Some("0.2"));
}
