//! The house rule of `src/`: imports run downwards only. The pure dataflow knows no adapter;
//! `io::support` and `io::connect` know no source, sink or server; sources and sinks know
//! neither each other nor the servers; nothing in the library knows the commands, and the
//! commands know no binary. A reference that breaks the rule fails here with the file and line.

use std::path::{Path, PathBuf};

/// The layer of a module path (`dataflow`, `io::sinks::kafka`, `commands::run`), lowest first.
/// Sources and sinks share a rank but may not reach into each other.
fn layer(module: &str) -> Option<(u8, &'static str)> {
    let layers: [(&str, u8); 8] = [
        ("dataflow", 0),
        ("io::support", 1),
        ("io::connect", 2),
        ("io::sources", 3),
        ("io::sinks", 3),
        ("io::serve", 4),
        ("commands", 5),
        ("bin", 6),
    ];
    layers
        .iter()
        .find(|(prefix, _)| module == *prefix || module.starts_with(&format!("{prefix}::")))
        .map(|(prefix, rank)| (*rank, *prefix))
}

/// `src/io/sinks/kafka.rs` as `io::sinks::kafka`; binaries as `bin`.
fn module_of(file: &Path, src: &Path) -> String {
    let relative = file.strip_prefix(src).unwrap().with_extension("");
    let parts: Vec<String> = relative
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .filter(|p| p != "mod")
        .collect();
    if parts.first().map(String::as_str) == Some("bin") {
        return "bin".into();
    }
    parts.join("::")
}

fn rust_files(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
}

/// Every `crate::a::b` (or `iotpipe::a::b` in binaries) the code of `text` names, with its line;
/// comments are skipped (a doc link is not an import).
fn references(text: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        for prefix in ["crate::", "iotpipe::"] {
            let mut rest = code;
            while let Some(at) = rest.find(prefix) {
                let after = &rest[at + prefix.len()..];
                let path: String = after
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                    .collect();
                found.push((number + 1, path.trim_end_matches(':').to_owned()));
                rest = after;
            }
        }
    }
    found
}

#[test]
fn imports_run_downwards_only() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut broken = Vec::new();
    let mut checked = 0;
    for file in &files {
        let module = module_of(file, &src);
        let Some((rank, home)) = layer(&module) else {
            continue;
        };
        let text = std::fs::read_to_string(file).unwrap();
        for (line, reference) in references(&text) {
            let Some((target_rank, target_home)) = layer(&reference) else {
                continue;
            };
            checked += 1;
            let upwards = target_rank > rank;
            let sideways = target_rank == rank && target_home != home;
            if upwards || sideways {
                broken.push(format!(
                    "{}:{line}: {home} must not use {reference}",
                    file.strip_prefix(&src).unwrap().display()
                ));
            }
        }
    }
    assert!(
        checked > 100,
        "only {checked} references seen: is the scan broken?"
    );
    assert!(
        broken.is_empty(),
        "imports against the layers:\n{}",
        broken.join("\n")
    );
}

#[test]
fn the_scan_sees_what_it_must_refuse() {
    // The check itself: an upward and a sideways reference are both seen.
    let text = "use crate::commands::run::RunConfig;\nlet x = crate::io::sinks::kafka::f(); // crate::io::serve in a comment\n";
    let found = references(text);
    assert_eq!(
        found,
        vec![
            (1, "commands::run::RunConfig".to_owned()),
            (2, "io::sinks::kafka::f".to_owned())
        ]
    );
    assert_eq!(layer("io::sinks::kafka::f"), Some((3, "io::sinks")));
    assert_eq!(layer("io::sources::fleet"), Some((3, "io::sources")));
    assert_eq!(layer("io"), None);
}
