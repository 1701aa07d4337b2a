#!/usr/bin/env bash
# Connections at scale against Weir and mosquitto in the same run (benches/scale/run.py):
# 100 k idle plain connections and 20 k TLS ones (RSS per connection), and a 50 k TLS
# reconnect storm (time until all are back, peak RSS, latency of devices already
# connected). Needs root (open-file limits), mosquitto and the e2e venv.
#
#   benches/scale.sh                              # IDLE=100000 TLS_IDLE=20000 STORM=50000
#   ONLY=storm STORM=20000 RATES=2000 benches/scale.sh
set -euo pipefail
cd "$(dirname "$0")/.."
command -v mosquitto >/dev/null || { echo "mosquitto is missing: apt-get install -y mosquitto" >&2; exit 2; }
cargo build --release -p weir --bin weir
ulimit -n 1048576 2>/dev/null || ulimit -n "$(ulimit -Hn)"
WEIR_BIN=target/release/weir .venv/bin/python benches/scale/run.py
