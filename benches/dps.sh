#!/usr/bin/env bash
# Registrations per second against the provisioning service (a release build): N devices
# of one group enrollment register over MQTT/TLS, C at a time, each created on a linked
# hub through its REST API. Both processes on loopback aliases (127.0.0.2, 127.0.0.3).
#
#   benches/dps.sh            # N=1000 C=16
#   N=3000 C=32 benches/dps.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p weir --bin weir
.venv/bin/python benches/dps/load.py "${N:-1000}" "${C:-16}"
