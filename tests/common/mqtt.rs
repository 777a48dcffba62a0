//! A real mosquitto for tests, on free loopback ports in a temp dir, stopped on drop: either
//! anonymous and plain, or the fleet configuration of `deploy/mosquitto/` with only paths and
//! ports rewritten, a plain listener for devices and a TLS one (test CA) for the bridge.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn mosquitto_bin() -> &'static str {
    if Path::new("/usr/sbin/mosquitto").exists() {
        "/usr/sbin/mosquitto"
    } else {
        "mosquitto"
    }
}

/// The user names and passwords the fleet broker knows.
pub const BRIDGE_USER: &str = "iotpipe-bridge";
pub const BRIDGE_PASSWORD: &str = "bridge-secret";
pub const FLEET_SECRET: &str = "fleet-secret";

/// A running mosquitto.
pub struct Mosquitto {
    child: Child,
    config: PathBuf,
    /// Plain listener.
    pub port: u16,
    /// TLS listener (fleet configuration only).
    pub tls_port: Option<u16>,
    /// TLS listener that requires a client certificate signed by the test CA (fleet
    /// configuration only); `client.pem`/`client.key` in `dir` are one.
    pub mutual_tls_port: Option<u16>,
    /// The test CA's certificate (fleet configuration only).
    pub ca_file: Option<PathBuf>,
    pub dir: tempfile::TempDir,
}

impl Mosquitto {
    /// Anonymous, plain, no persistence.
    pub fn anonymous() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = super::free_port();
        let config = dir.path().join("mosquitto.conf");
        std::fs::write(
            &config,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"),
        )
        .unwrap();
        let child = spawn(&config, dir.path(), port);
        Self {
            child,
            config,
            port,
            tls_port: None,
            mutual_tls_port: None,
            ca_file: None,
            dir,
        }
    }

    /// `deploy/mosquitto/` for a fleet of `devices` (passwords derived from [`FLEET_SECRET`]),
    /// the bridge user, and `extra_acl` appended to the shipped ACL.
    pub fn fleet(devices: usize, extra_acl: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/mosquitto");
        let mut passwords: Vec<String> =
            iotpipe::commands::loadgen::credentials::password_lines(FLEET_SECRET, devices)
                .collect();
        passwords.push(format!("{BRIDGE_USER}:{BRIDGE_PASSWORD}"));
        passwords.push("iotpipe-loadgen:loadgen-secret".into());
        std::fs::write(d.join("passwd"), passwords.join("\n") + "\n").unwrap();
        let hashed = Command::new("mosquitto_passwd")
            .arg("-U")
            .arg(d.join("passwd"))
            .status()
            .expect("mosquitto_passwd runs (scripts/test.sh installs mosquitto)");
        assert!(hashed.success());
        let acl = std::fs::read_to_string(deploy.join("acl")).unwrap();
        std::fs::write(d.join("acl"), format!("{acl}\n{extra_acl}\n")).unwrap();
        make_test_ca(d);
        let port = super::free_port();
        let tls_port = super::free_port();
        let shipped = std::fs::read_to_string(deploy.join("mosquitto.conf")).unwrap();
        let mut config = String::new();
        for line in shipped.lines() {
            let key = line.split_whitespace().next().unwrap_or("");
            let path = |name: &str| format!("{key} {}\n", d.join(name).display());
            config += &match key {
                "password_file" => path("passwd"),
                "acl_file" => path("acl"),
                "cafile" => path("ca.pem"),
                "certfile" => path("server.pem"),
                "keyfile" => path("server.key"),
                "persistence_location" => format!("{key} {}/\n", d.display()),
                "listener" => format!("listener {tls_port} 127.0.0.1\n"),
                _ => format!("{line}\n"),
            };
        }
        // Started as root, mosquitto would drop to a user that cannot read the temp dir.
        config += &format!("user root\nlistener {port} 127.0.0.1\n");
        let mutual_tls_port = super::free_port();
        config += &format!(
            "listener {mutual_tls_port} 127.0.0.1\ncafile {0}/ca.pem\ncertfile {0}/server.pem\n\
             keyfile {0}/server.key\nrequire_certificate true\n",
            d.display()
        );
        let config_path = d.join("mosquitto.conf");
        std::fs::write(&config_path, config).unwrap();
        let child = spawn(&config_path, d, port);
        wait_listening(tls_port);
        wait_listening(mutual_tls_port);
        Self {
            child,
            config: config_path,
            port,
            tls_port: Some(tls_port),
            mutual_tls_port: Some(mutual_tls_port),
            ca_file: Some(d.join("ca.pem")),
            dir,
        }
    }

    /// Stops the broker the way a service manager does (SIGTERM: it saves its sessions and
    /// queues), waits `down`, and starts it again on the same ports and data.
    pub fn restart_after(&mut self, down: Duration) {
        super::send_signal(self.child.id(), "TERM");
        let _ = self.child.wait();
        std::thread::sleep(down);
        self.child = spawn(&self.config, self.dir.path(), self.port);
        if let Some(tls_port) = self.tls_port {
            wait_listening(tls_port);
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(config: &Path, dir: &Path, port: u16) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("mosquitto.log"))
        .unwrap();
    let child = Command::new(mosquitto_bin())
        .arg("-c")
        .arg(config)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("mosquitto runs (scripts/test.sh installs it)");
    wait_listening(port);
    child
}

fn wait_listening(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "mosquitto did not start on {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A CA and a server certificate for 127.0.0.1 signed by it, made with the openssl tool.
pub fn make_test_ca(dir: &Path) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl runs");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=iotpipe test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "san.ext",
        "-out",
        "server.pem",
    ]);
    // An extension makes it an X.509 v3 certificate, the only version webpki accepts.
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    let client = "-subj /CN=iotpipe-bridge -keyout client.key -out client.csr";
    let mut args = vec!["req", "-newkey", "rsa:2048", "-nodes"];
    args.extend(client.split(' '));
    run(&args);
    run(&[
        "x509",
        "-req",
        "-in",
        "client.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-days",
        "2",
        "-extfile",
        "client.ext",
        "-out",
        "client.pem",
    ]);
}
