#!/usr/bin/env bash
# Installs what the tests need (when missing) and runs the whole test suite.
#
# The core tests need only the Rust toolchain: every server a test uses is started by the test
# itself, on 127.0.0.1, and this script is where the packages behind them get installed.
set -euo pipefail
cd "$(dirname "$0")/.."

need() { command -v "$1" >/dev/null 2>&1; }

if ! need cargo; then
    echo "test.sh: cargo is missing: install Rust (rustup) first" >&2
    exit 1
fi

# Debian packages of the servers tests start (as root, or through sudo).
install_debian() {
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq || true
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@"
}
if ! need mosquitto && [ ! -x /usr/sbin/mosquitto ]; then
    echo "test.sh: installing mosquitto (MQTT tests; mosquitto_passwd comes with it)"
    install_debian mosquitto
fi
if ! need influxd; then
    echo "test.sh: installing influxdb (InfluxDB 1.x for the InfluxDB sink tests)"
    install_debian influxdb
fi
# promtool checks every /metrics a test scrapes; one test scrapes `iotpipe run` with a real
# Prometheus server.
if ! need promtool; then
    echo "test.sh: installing prometheus (promtool and the server for the metrics tests)"
    install_debian prometheus
fi
# The Alertmanager channel is tested against a real Alertmanager.
if ! need prometheus-alertmanager; then
    echo "test.sh: installing prometheus-alertmanager (Alertmanager channel tests)"
    install_debian prometheus-alertmanager
fi
# The dashboard test drives the page in headless Chromium.
if ! need chromium; then
    echo "test.sh: installing chromium (dashboard browser test)"
    install_debian chromium
fi
# The https InfluxDB test reads back through curl, trusting its test CA.
if ! need curl; then
    echo "test.sh: installing curl (https read-back)"
    install_debian curl
fi
# The MQTT tests make a test CA and a server certificate for the bridge's TLS listener.
if ! need openssl; then
    echo "test.sh: installing openssl (test certificates)"
    install_debian openssl
fi
# The metadata store tests initdb their own PostgreSQL 15 cluster in a temp dir.
if [ ! -x /usr/lib/postgresql/15/bin/initdb ]; then
    echo "test.sh: installing postgresql-15 (metadata store tests)"
    install_debian postgresql-15
fi
# The packages' services are not needed: tests start their own servers on free ports.
if command -v systemctl >/dev/null 2>&1; then
    systemctl disable --now mosquitto influxdb prometheus prometheus-node-exporter postgresql \
        >/dev/null 2>&1 || true
fi

# tansu, the Kafka-protocol broker the Kafka tests start. Built once per machine (about 45
# minutes on 2 cores); its storage features are needed, the default build stores nothing.
if ! need tansu && [ ! -x "$HOME/.cargo/bin/tansu" ]; then
    echo "test.sh: building tansu 0.6.0 (Kafka tests; once per machine, about 45 minutes)"
    cargo install tansu --version 0.6.0 --locked --features dynostore,libsql
fi

# The warehouse tests read iotpipe's Parquet with independent readers: DuckDB and pyarrow,
# from PyPI, in a virtual environment under target/ (binary wheels, a few seconds).
pyenv=target/pyenv
if ! "$pyenv/bin/python" -c "import duckdb, pyarrow" >/dev/null 2>&1; then
    if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c "import ensurepip" >/dev/null 2>&1; then
        echo "test.sh: installing python3-venv (the warehouse tests' readers)"
        install_debian python3-venv
    fi
    echo "test.sh: installing duckdb and pyarrow into $pyenv (warehouse tests)"
    rm -rf "$pyenv"
    python3 -m venv "$pyenv"
    "$pyenv/bin/pip" install --quiet --disable-pip-version-check duckdb==2.0.1 pyarrow==26.0.1
fi
export IOTPIPE_PYTHON="$PWD/$pyenv/bin/python"

log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
# Library, binaries, integration tests, and the benches once each in test mode.
cargo test --lib --bins --tests --benches --no-fail-fast "$@" 2>&1 | tee "$log" || status=$?
# The examples in the documentation of the dataflow's stages are tests too.
cargo test --doc --no-fail-fast "$@" 2>&1 | tee -a "$log" || status=$?
passed=$(grep -o '[0-9]* passed' "$log" | awk '{s += $1} END {print s + 0}')
failed=$(grep -o '[0-9]* failed' "$log" | awk '{s += $1} END {print s + 0}')
echo "iotpipe: $passed passed, $failed failed"
exit "$status"
