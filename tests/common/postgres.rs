//! A PostgreSQL 15 server for one test: `initdb` in a temp dir, started on a free loopback
//! port, stopped when dropped. PostgreSQL refuses to run as root, so as root the server runs as
//! the `postgres` user (the temp dir is handed to it).

use std::path::{Path, PathBuf};
use std::process::Command;

/// Where Debian puts the server binaries (`IOTPIPE_PG_BIN` overrides).
fn bin_dir() -> PathBuf {
    std::env::var_os("IOTPIPE_PG_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// A running server.
pub struct Postgres {
    dir: tempfile::TempDir,
    port: u16,
    as_postgres: bool,
}

impl Postgres {
    /// Initialises a cluster and starts it (trust authentication, user `postgres`).
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let as_postgres = is_root();
        if as_postgres {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(status.success(), "chown of the data directory failed");
        }
        let server = Self {
            port: super::free_port(),
            dir,
            as_postgres,
        };
        let data = server.data_dir();
        server.run(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
            ],
        );
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {}",
            server.port,
            server.dir.path().display()
        );
        let log = server.dir.path().join("server.log");
        server.run(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-o",
                &options,
                "-l",
                log.to_str().unwrap(),
                "-w",
                "start",
            ],
        );
        server
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A server binary as a command, run as `postgres` when the test runs as root.
    fn command(&self, program: &str) -> Command {
        let program = bin_dir().join(program);
        if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        }
    }

    fn run(&self, program: &str, args: &[&str]) {
        let output = self
            .command(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{program}: {e}"));
        assert!(
            output.status.success(),
            "{program} {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// The URL of its `postgres` database.
    pub fn url(&self) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Creates database `name` (each test of a server may want a store of its own); its URL.
    #[allow(dead_code)]
    pub fn create_database(&self, name: &str) -> String {
        let output = self
            .command("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
            ])
            .args(["-c", &format!("CREATE DATABASE \"{name}\"")])
            .output()
            .expect("psql");
        assert!(
            output.status.success(),
            "CREATE DATABASE {name}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        format!("postgresql://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// Runs `sql` with psql in database `database` as `user` (trusted): its output, or its
    /// error.
    #[allow(dead_code)]
    pub fn psql(&self, database: &str, user: &str, sql: &str) -> Result<String, String> {
        let output = self
            .command("psql")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", user, "-d", database, "-v", "ON_ERROR_STOP=1", "-At"])
            .args(["-c", sql])
            .output()
            .expect("psql");
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&output.stderr).into_owned())
        }
    }

    /// The server's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// The data directory's parent (for files a test wants cleaned up with the server).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.data_dir();
        let _ = self
            .command("pg_ctl")
            .args([
                "-D",
                data.to_str().unwrap(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ])
            .output();
    }
}
