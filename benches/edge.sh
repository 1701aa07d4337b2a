#!/usr/bin/env bash
# Edge forwarding benchmarks (see benches/edge/load.py): live forwarding over one upstream
# connection (MQTT/TLS, QUIC, WebSocket) and catch-up after an outage with the edge's RSS.
#
#   benches/edge.sh                              # RATE=20000 SECS=60 MSGS=2000
#   SECS=600 ONLY=backlog TRANSPORTS=mqtts benches/edge.sh   # the 10-minute backlog
#   ONLY=live TRANSPORTS=mqtts,quic,websocket benches/edge.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p weir --bin weir
.venv/bin/python benches/edge/load.py
