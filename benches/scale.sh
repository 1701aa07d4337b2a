#!/usr/bin/env bash
# Connections at scale against Weir and mosquitto in the same run (benches/scale/run.py):
# idle plain and TLS connections (RSS per connection) and a TLS reconnect storm (time until
# all are back, peak RSS, latency of devices already connected). Counts are bounded by the
# open-file limit of one process (RLIMIT_NOFILE; 100 k needs a hard limit above it, which
# takes root with CAP_SYS_RESOURCE). Needs mosquitto and the e2e venv.
#
#   benches/scale.sh                              # IDLE=18000 TLS_IDLE=10000 STORM=18000
#   ONLY=storm STORM=10000 RATES=2000 benches/scale.sh
#   ONLY=cluster CLUSTER_PROCS=6 CLUSTER_PER=16700 benches/scale.sh   # 100 k over 6 processes
#   (SETTLE_SECS=40: how long connections idle before RSS is read; RSS printed each second)
#   ONLY=throughput THRU_WORKERS=2 benches/scale.sh   # 1 process vs a cluster of 2
#   ONLY=cluster-storm STORM_PROCS=3 STORM_PER=16700 benches/scale.sh   # 50 k TLS storm
#   ONLY=idle-cpu benches/scale.sh   # CPU of an idle hub: alone, 2 and 3 processes
#   (CLUSTER_ON=5: only process 5 gets connections; EXTRA_CONFIG='[dedupe]\nwindow_secs = 0')
set -euo pipefail
cd "$(dirname "$0")/.."
command -v mosquitto >/dev/null || { echo "mosquitto is missing: apt-get install -y mosquitto" >&2; exit 2; }
cargo build --release -p weir --bin weir
ulimit -n 1048576 2>/dev/null || ulimit -n "$(ulimit -Hn)"
WEIR_BIN="$PWD/target/release/weir" .venv/bin/python benches/scale/run.py
