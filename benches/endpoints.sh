#!/usr/bin/env bash
# The mqtt and webhook endpoint paths, each against a bare client in the same run:
#
#   mqtt bare:   `weir simulate --broker` publishes N QoS 1 messages straight into a
#                mosquitto started here (2 connections, 1000 in flight each: what Weir's
#                endpoint uses with 2 workers); timed until `mosquitto_sub -C N` has them;
#   mqtt weir:   `weir simulate` publishes N QoS 1 messages into Weir (50 devices); a rule
#                routes every one to an `mqtt` endpoint on that mosquitto; timed the same;
#   webhook:     the same N into Weir, routed to a `webhook` endpoint whose receiver
#                (`webhook-sink`, hyper, answers 204) counts lines; timed until it has N.
#
#   benches/endpoints.sh                 # N=200000 by default
#   N=500000 benches/endpoints.sh
#
# Needs mosquitto and mosquitto-clients. Results go to bench-out/endpoints-*.json and a
# table on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-200000}
PUBS=${PUBS:-50}
OUT=${OUT:-bench-out}
MQTT_PORT=${MQTT_PORT:-18842}
API_PORT=${API_PORT:-18091}
MOSQ_PORT=${MOSQ_PORT:-18843}
HOOK_PORT=${HOOK_PORT:-18844}
PAYLOAD='{"temp": {{rand:15:35}}, "hum": {{randint:20:80}}, "seq": {{seq}}, "site": "plant-7", "line": "assembly-b", "status": "nominal"}'

for c in mosquitto mosquitto_sub; do
  command -v "$c" >/dev/null || { echo "$c is missing: apt-get install -y mosquitto mosquitto-clients" >&2; exit 2; }
done
cargo build --release -p weir -p weir-benches --bin weir --bin webhook-sink
W=target/release/weir
S=target/release/webhook-sink
mkdir -p "$OUT"
TMP=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$TMP"
}
trap cleanup EXIT

cat > "$TMP/mosquitto.conf" <<CONF
listener $MOSQ_PORT 127.0.0.1
allow_anonymous true
persistence false
max_inflight_messages 0
max_queued_messages 0
CONF
mosquitto -c "$TMP/mosquitto.conf" 2>"$TMP/mosquitto.log" & PIDS+=($!)
sleep 0.5

now() { date +%s.%N; }

# Starts a subscriber that exits after N messages, as $sub.
subscriber() {
  mosquitto_sub -h 127.0.0.1 -p "$MOSQ_PORT" -t '#' -q 1 -C "$N" -i "bench-sub-$1" >/dev/null &
  sub=$!
  PIDS+=("$sub")
  sleep 0.3
}

echo "== mqtt bare: simulate → mosquitto, $N messages"
subscriber bare
start=$(now)
"$W" simulate --broker --mqtt "127.0.0.1:$MOSQ_PORT" --devices 2 --messages $((N / 2)) --qos 1 \
  --inflight 1000 --payload "$PAYLOAD" --json --quiet > "$OUT/endpoints-mqtt-bare-pub.json"
wait "$sub"
bare_secs=$(awk "BEGIN {print $(now) - $start}")

# Runs Weir on the rules in $1, sends N messages from PUBS devices, and leaves the
# publish report in $2.
weir_run() {
  rm -rf "$TMP/weir"
  printf '[logging]\nlevel = "warn"\n' > "$TMP/weir.toml"
  "$W" serve -c "$TMP/weir.toml" --data-dir "$TMP/weir" --rules "$1" --mqtt "127.0.0.1:$MQTT_PORT" \
    --mqtts off --quic off --http "127.0.0.1:$API_PORT" & WEIR=$!
  PIDS+=("$WEIR")
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$API_PORT/health" >/dev/null 2>&1 && break; sleep 0.1; done
  HUB=(--api "http://127.0.0.1:$API_PORT" --data-dir "$TMP/weir" --mqtt "127.0.0.1:$MQTT_PORT")
  "$W" simulate "${HUB[@]}" --register-only --devices "$PUBS" --quiet >/dev/null
  start=$(now)
  "$W" simulate "${HUB[@]}" --devices "$PUBS" --messages $((N / PUBS)) --qos 1 --inflight 100 \
    --payload "$PAYLOAD" --json --quiet > "$2"
}

weir_stop() {
  kill -TERM "$WEIR"; wait "$WEIR" 2>/dev/null || true
}

echo "== mqtt weir: MQTT → log → rules → mqtt endpoint → mosquitto, $N messages"
mkdir -p "$TMP/rules-mqtt" "$TMP/rules-hook"
cat > "$TMP/rules-mqtt/r.toml" <<RULES
[[endpoint]]
name = "broker"
type = "mqtt"
url = "mqtt://127.0.0.1:$MOSQ_PORT"
topic = "weir/{route}/{deviceId}"

[[route]]
name = "everything"
condition = "true"
endpoints = ["broker"]
RULES
subscriber weir
weir_run "$TMP/rules-mqtt" "$OUT/endpoints-mqtt-weir-pub.json"
wait "$sub"
weir_secs=$(awk "BEGIN {print $(now) - $start}")
weir_stop

echo "== webhook: MQTT → log → rules → webhook endpoint → receiver, $N messages"
cat > "$TMP/rules-hook/r.toml" <<RULES
[[endpoint]]
name = "hook"
type = "webhook"
url = "http://127.0.0.1:$HOOK_PORT/weir"
secret = "a-benchmark-secret-of-some-length"

[[route]]
name = "everything"
condition = "true"
endpoints = ["hook"]
RULES
"$S" "$HOOK_PORT" "$N" 300 > "$OUT/endpoints-webhook-rx.json" & rx=$!
PIDS+=("$rx")
weir_run "$TMP/rules-hook" "$OUT/endpoints-webhook-pub.json"
wait "$rx"
hook_secs=$(awk "BEGIN {print $(now) - $start}")
weir_stop

python3 - "$OUT" "$N" "$bare_secs" "$weir_secs" "$hook_secs" <<'PY'
import json, sys
out, n = sys.argv[1], int(sys.argv[2])
bare_s, weir_s, hook_s = map(float, sys.argv[3:6])
rx = json.load(open(f"{out}/endpoints-webhook-rx.json"))
pub = json.load(open(f"{out}/endpoints-mqtt-weir-pub.json"))
assert rx["lines"] >= n, f"the webhook receiver got only {rx['lines']} of {n}"
res = {"n": n, "mqtt_bare": n / bare_s, "mqtt_weir": n / weir_s, "webhook": n / hook_s,
       "webhook_receiver_rate": rx["rate"], "weir_mqtt_ingest": pub["publish_rate"]}
json.dump(res, open(f"{out}/endpoints.json", "w"))
print("\n| path | messages | msg/s | vs bare |")
print("|---|---|---|---|")
print(f"| bare: simulate → mosquitto, QoS 1, 2 connections × 1000 in flight (until subscribed) | {n:,} | {res['mqtt_bare']:,.0f} | 1.00× |")
print(f"| Weir: MQTT QoS 1 → log → rules → `mqtt` endpoint → mosquitto (until subscribed) | {n:,} | {res['mqtt_weir']:,.0f} | {res['mqtt_weir'] / res['mqtt_bare']:.2f}× |")
print(f"| Weir: MQTT QoS 1 → log → rules → `webhook` endpoint (until the receiver has all) | {n:,} | {res['webhook']:,.0f} | |")
print(f"| (Weir's MQTT side alone in the mqtt run: PUBACKed) | {pub['acked']:,} | {pub['publish_rate']:,.0f} | |")
PY
