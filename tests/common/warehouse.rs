//! Reading iotpipe's Parquet warehouse with independent readers: DuckDB and pyarrow from PyPI,
//! in the virtual environment `scripts/test.sh` makes under `target/`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// The Python of the readers' virtual environment.
fn python() -> PathBuf {
    let path = std::env::var_os("IOTPIPE_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/pyenv/bin/python"));
    assert!(
        path.exists(),
        "{} is missing: scripts/test.sh installs duckdb and pyarrow there",
        path.display()
    );
    path
}

/// Runs `script` (Python, with `json` imported and `ARG` the argument) and parses what it
/// prints as JSON.
fn run_python(script: &str, arg: &str) -> Value {
    let program = format!("import json, sys\nARG = sys.argv[1]\n{script}");
    let output = Command::new(python())
        .args(["-c", &program, arg])
        .output()
        .expect("python runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("the script prints JSON")
}

/// The rows DuckDB answers `sql` with, each a map of column to value.
pub fn duckdb(sql: &str) -> Vec<BTreeMap<String, Value>> {
    let answer = run_python(
        "import duckdb\ncon = duckdb.connect()\nrows = con.execute(ARG).fetchall()\ncols = [d[0] for d in con.description]\nprint(json.dumps([dict(zip(cols, r)) for r in rows], default=str))",
        sql,
    );
    serde_json::from_value(answer).unwrap()
}

/// What pyarrow makes of a table: its rows (as a Hive-partitioned dataset) and each file's
/// `iotpipe.schema_version` metadata.
pub fn pyarrow_table(dir: &Path) -> (u64, Vec<String>) {
    let answer = run_python(
        "import pyarrow.dataset as ds, pyarrow.parquet as pq\nd = ds.dataset(ARG, format='parquet', partitioning='hive')\nversions = [pq.read_metadata(f).metadata[b'iotpipe.schema_version'].decode() for f in d.files]\nprint(json.dumps([d.count_rows(), versions]))",
        dir.to_str().unwrap(),
    );
    serde_json::from_value(answer).unwrap()
}

/// Every file under `dir` with its SHA-256, by path relative to `dir`.
pub fn file_hashes(dir: &Path) -> BTreeMap<String, String> {
    use sha2::{Digest, Sha256};
    let mut hashes = BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(folder) = stack.pop() {
        for entry in std::fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let bytes = std::fs::read(&path).unwrap();
                let name = path
                    .strip_prefix(dir)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                hashes.insert(name, hex::encode(Sha256::digest(&bytes)));
            }
        }
    }
    hashes
}
