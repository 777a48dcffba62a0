//! Headless Chromium (Debian `chromium`) for the dashboard tests: loads a page, lets its
//! scripts run, and dumps the DOM or a screenshot.

use std::path::Path;
use std::process::{Command, Output};

/// Runs Chromium on `url` with `args` (`--dump-dom`, `--screenshot=...`) in the profile
/// directory `user_data`; fails the test if Chromium fails.
pub fn chromium(user_data: &Path, args: &[&str], url: &str) -> Output {
    let output = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--enable-logging=stderr",
            "--v=0",
            // Long enough for the page's first round of requests and drawing.
            "--virtual-time-budget=8000",
        ])
        .arg(format!("--user-data-dir={}", user_data.display()))
        .args(args)
        .arg(url)
        .output()
        .expect("chromium runs (scripts/test.sh installs the chromium package)");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// The page's DOM after its scripts ran, with a check that none failed: the page counts its
/// own errors (`data-errors`), and the console logged none.
pub fn dom_without_errors(user_data: &Path, url: &str) -> String {
    let output = chromium(user_data, &["--dump-dom"], url);
    let dom = String::from_utf8_lossy(&output.stdout).into_owned();
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(
        dom.contains("data-errors=\"0\""),
        "errors on the page {url}:\n{dom}"
    );
    for line in log.lines().filter(|l| l.contains("CONSOLE")) {
        assert!(
            !line.contains("Uncaught") && !line.contains("Error"),
            "console: {line}"
        );
    }
    dom
}

/// A screenshot of the page at `url`, `width` x `height`, kept as
/// `target/test-artifacts/NAME` for people to look at; its PNG bytes.
pub fn screenshot(user_data: &Path, url: &str, name: &str, (width, height): (u32, u32)) -> Vec<u8> {
    let artifacts = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let path = artifacts.join(name);
    let _ = std::fs::remove_file(&path);
    chromium(
        user_data,
        &[
            &format!("--screenshot={}", path.display()),
            &format!("--window-size={width},{height}"),
            "--hide-scrollbars",
        ],
        url,
    );
    std::fs::read(&path).unwrap()
}

/// Drives Chromium over the DevTools protocol (`tests/common/cdp.py`, a pipe, no extra
/// packages): opens `url` in the profile `user_data` and runs `steps` (`{"wait": JS}` until
/// truthy, `{"eval": JS}`); each step's value. Fails the test if a step throws or times out.
pub fn drive(user_data: &Path, url: &str, steps: &[serde_json::Value]) -> Vec<serde_json::Value> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/common/cdp.py");
    let output = Command::new("python3")
        .arg(script)
        .arg(url)
        .arg(user_data)
        .arg(serde_json::Value::from(steps.to_vec()).to_string())
        .output()
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}
