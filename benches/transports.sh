#!/usr/bin/env bash
# MQTT over TCP, TLS and QUIC against one `weir serve`, in one run: QoS 1 throughput
# (publish until every PUBACK is back) and publish→PUBACK latency at a fixed rate, with
# the same devices, payload and rules for each transport.
#
#   benches/transports.sh
#   PUBS=50 MSGS=10000 RATE=5000 benches/transports.sh
#
# Results go to bench-out/transport-*.json and a table on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
PUBS=${PUBS:-50}
MSGS=${MSGS:-10000}
RATE=${RATE:-5000}
SECS=${SECS:-10}
OUT=${OUT:-bench-out}
MQTT_PORT=${MQTT_PORT:-18831}
MQTTS_PORT=${MQTTS_PORT:-18832}
QUIC_PORT=${QUIC_PORT:-18833}
API_PORT=${API_PORT:-18080}
PAYLOAD='{"temp": {{rand:15:35}}, "hum": {{randint:20:80}}, "seq": {{seq}}, "site": "plant-7", "line": "assembly-b", "status": "nominal"}'

cargo build --release -p weir
W=target/release/weir
mkdir -p "$OUT"
TMP=$(mktemp -d)
WEIR=
cleanup() { [ -n "$WEIR" ] && kill "$WEIR" 2>/dev/null; rm -rf "$TMP"; }
trap cleanup EXIT

cat > "$TMP/weir.toml" <<CONF
[archive]
max_age_secs = 0.25
[logging]
level = "warn"
CONF
"$W" serve -c "$TMP/weir.toml" --data-dir "$TMP/weir" --rules benches/rules \
  --mqtt "127.0.0.1:$MQTT_PORT" --mqtts "127.0.0.1:$MQTTS_PORT" --quic "127.0.0.1:$QUIC_PORT" \
  --http "127.0.0.1:$API_PORT" & WEIR=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$API_PORT/health" >/dev/null 2>&1 && break; sleep 0.1; done

HUB=(--api "http://127.0.0.1:$API_PORT" --data-dir "$TMP/weir" --mqtt "127.0.0.1:$MQTT_PORT"
     --mqtts "127.0.0.1:$MQTTS_PORT" --quic "127.0.0.1:$QUIC_PORT")
for t in tcp tls quic; do
  "$W" simulate "${HUB[@]}" --transport "$t" --devices "$PUBS" --messages "$MSGS" --qos 1 --inflight 100 \
    --payload "$PAYLOAD" --json --quiet > "$OUT/transport-$t.json"
  echo "$t throughput: $(cat "$OUT/transport-$t.json")"
  "$W" simulate "${HUB[@]}" --transport "$t" --devices "$PUBS" --rate "$RATE" --duration "$SECS" --messages 0 \
    --qos 1 --payload "$PAYLOAD" --json --quiet > "$OUT/transport-$t-latency.json"
  echo "$t at $RATE msg/s: $(cat "$OUT/transport-$t-latency.json")"
done
kill -TERM "$WEIR"; wait "$WEIR" 2>/dev/null || true; WEIR=

python3 - "$OUT" "$RATE" <<'PY'
import json, sys
out, rate = sys.argv[1], sys.argv[2]
j = lambda n: json.load(open(f"{out}/transport-{n}.json"))
tcp = j("tcp")["publish_rate"]
print(f"\n| transport | QoS 1 msg/s (PUBACKed) | vs TCP | PUBACK p50 / p99 / max at {rate} msg/s (ms) |")
print("|---|---|---|---|")
for t in ["tcp", "tls", "quic"]:
    r, l = j(t), j(f"{t}-latency")["latency_ms"]
    assert r["acked"] == r["sent"], f"{t}: {r['sent'] - r['acked']} not acknowledged"
    print(f"| {t} | {r['publish_rate']:,.0f} | {r['publish_rate'] / tcp:.2f}× | "
          f"{l['p50']:.2f} / {l['p99']:.2f} / {l['max']:.1f} |")
PY
