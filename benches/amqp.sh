#!/usr/bin/env bash
# The Weir → RabbitMQ path against a bare publisher into the same RabbitMQ, in one run:
#
#   bare:  amqp-bench publishes N messages (the same properties and headers Weir sends),
#          persistent, confirms, 4096 unconfirmed at most;
#   weir:  `weir simulate` publishes N QoS 1 messages over MQTT; a rule routes every one to
#          an `amqp` endpoint; timed until the queue holds N messages;
#   gateway: N device messages (SAS header) wait in a queue; Weir starts with the AMQP
#          gateway on it; timed until all are durable in its log (its counter reaches N),
#          compared with the MQTT gateway's PUBACKed rate from the run above.
#
#   benches/amqp.sh                      # N=200000 by default
#   N=500000 benches/amqp.sh
#
# Needs rabbitmq-server (started here on loopback if it is not running). Results go to
# bench-out/amqp-*.json and a table on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-200000}
PUBS=${PUBS:-50}
OUT=${OUT:-bench-out}
MQTT_PORT=${MQTT_PORT:-18841}
API_PORT=${API_PORT:-18090}
URL="amqp://guest:guest@127.0.0.1:5672/%2f"
PAYLOAD='{"temp": {{rand:15:35}}, "hum": {{randint:20:80}}, "seq": {{seq}}, "site": "plant-7", "line": "assembly-b", "status": "nominal"}'

command -v rabbitmq-server >/dev/null || { echo "rabbitmq-server is missing: apt-get install -y rabbitmq-server" >&2; exit 2; }
export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 ERL_EPMD_ADDRESS=127.0.0.1
export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
rabbitmqctl -q status >/dev/null 2>&1 || rabbitmq-server -detached
for _ in $(seq 60); do rabbitmqctl -q await_startup >/dev/null 2>&1 && break; sleep 2; done
rabbitmqctl -q await_startup
cargo build --release -p weir -p weir-benches --bin weir --bin amqp-bench
W=target/release/weir
B=target/release/amqp-bench
mkdir -p "$OUT"
TMP=$(mktemp -d)
WEIR=
cleanup() {
  [ -n "$WEIR" ] && kill "$WEIR" 2>/dev/null
  "$B" delete "$URL" weir.bench.bare weir.bench.bare 2>/dev/null || true
  "$B" delete "$URL" weir.bench.sink weir.bench.sink 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT

echo "== bare publisher, $N messages"
"$B" setup "$URL" weir.bench.bare weir.bench.bare
"$B" publish "$URL" weir.bench.bare "$N" > "$OUT/amqp-bare.json"
echo "bare: $(cat "$OUT/amqp-bare.json")"

echo "== weir: MQTT → log → rules → amqp endpoint, $N messages"
"$B" setup "$URL" weir.bench.sink weir.bench.sink
mkdir -p "$TMP/rules"
cat > "$TMP/rules/amqp.toml" <<RULES
[[endpoint]]
name = "queue"
type = "amqp"
url = "$URL"
exchange = "weir.bench.sink"

[[route]]
name = "everything"
condition = "true"
endpoints = ["queue"]
RULES
cat > "$TMP/weir.toml" <<CONF
[logging]
level = "warn"
CONF
"$W" serve -c "$TMP/weir.toml" --data-dir "$TMP/weir" --rules "$TMP/rules" --mqtt "127.0.0.1:$MQTT_PORT" \
  --mqtts off --quic off --http "127.0.0.1:$API_PORT" & WEIR=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$API_PORT/health" >/dev/null 2>&1 && break; sleep 0.1; done
HUB=(--api "http://127.0.0.1:$API_PORT" --data-dir "$TMP/weir" --mqtt "127.0.0.1:$MQTT_PORT")
"$W" simulate "${HUB[@]}" --register-only --devices "$PUBS" --quiet >/dev/null
start=$(date +%s.%N)
"$W" simulate "${HUB[@]}" --devices "$PUBS" --messages $((N / PUBS)) --qos 1 --inflight 100 \
  --payload "$PAYLOAD" --json --quiet > "$OUT/amqp-weir-mqtt.json"
got=$("$B" wait "$URL" weir.bench.sink "$N" 300)
end=$(date +%s.%N)
echo "weir: $got messages in the queue; publish side: $(cat "$OUT/amqp-weir-mqtt.json")"

echo "== AMQP gateway: a backlog of $N device messages"
"$W" device create gwbench --api "http://127.0.0.1:$API_PORT" --data-dir "$TMP/weir" >/dev/null
TOKEN=$("$W" device token gwbench --ttl 86400 --api "http://127.0.0.1:$API_PORT" --data-dir "$TMP/weir")
kill -TERM "$WEIR"; wait "$WEIR" 2>/dev/null || true; WEIR=
"$B" delete "$URL" weir.bench.gw weir.bench.gw 2>/dev/null || true
"$B" feed "$URL" weir.bench.gw "$N" "$TOKEN" > "$OUT/amqp-feed.json"
cat >> "$TMP/weir.toml" <<CONF
[amqp]
url = "$URL"
queues = ["weir.bench.gw"]
prefetch = 1000
CONF
gw_start=$(date +%s.%N)
"$W" serve -c "$TMP/weir.toml" --data-dir "$TMP/weir" --rules "$TMP/rules" --mqtt "127.0.0.1:$MQTT_PORT" \
  --mqtts off --quic off --http "127.0.0.1:$API_PORT" & WEIR=$!
metric='weir_gateway_messages_total{protocol="amqp"}'
for _ in $(seq 6000); do
  n=$(curl -sf "http://127.0.0.1:$API_PORT/metrics" 2>/dev/null | awk -v m="$metric" '$1 == m {print $2}')
  [ -n "$n" ] && [ "${n%.*}" -ge "$N" ] && break
  sleep 0.05
done
gw_end=$(date +%s.%N)
kill -TERM "$WEIR"; wait "$WEIR" 2>/dev/null || true; WEIR=
"$B" delete "$URL" weir.bench.gw weir.bench.gw 2>/dev/null || true
echo "gateway: ${n:-0} messages ingested"
python3 - "$OUT" "$N" "$got" "$start" "$end" "${n:-0}" "$gw_start" "$gw_end" <<'PY'
import json, sys
out, n, got, start, end = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
gw_n, gw_secs = int(float(sys.argv[6])), float(sys.argv[8]) - float(sys.argv[7])
bare = json.load(open(f"{out}/amqp-bare.json"))
mqtt = json.load(open(f"{out}/amqp-weir-mqtt.json"))
secs = end - start
rate = got / secs
json.dump({"queued": got, "seconds": secs, "rate": rate}, open(f"{out}/amqp-weir.json", "w"))
assert got >= n, f"only {got} of {n} messages reached the queue"
print(f"\n| path | messages | msg/s | vs bare |")
print("|---|---|---|---|")
print(f"| bare lapin publisher, confirms | {bare['sent']:,} | {bare['rate']:,.0f} | 1.00× |")
print(f"| weir: MQTT QoS 1 → log → rules → amqp endpoint (until queued) | {got:,} | {rate:,.0f} | {rate / bare['rate']:.2f}× |")
print(f"| (weir's MQTT side alone: PUBACKed) | {mqtt['acked']:,} | {mqtt['publish_rate']:,.0f} | |")
assert gw_n >= n, f"the AMQP gateway ingested only {gw_n} of {n}"
gw_rate = gw_n / gw_secs
print(f"\n| gateway | messages | msg/s durable in the log | vs MQTT |")
print("|---|---|---|---|")
print(f"| MQTT QoS 1 (50 connections, PUBACKed) | {mqtt['acked']:,} | {mqtt['publish_rate']:,.0f} | 1.00× |")
print(f"| AMQP gateway (backlog, prefetch 1000, incl. start-up) | {gw_n:,} | {gw_rate:,.0f} | {gw_rate / mqtt['publish_rate']:.2f}× |")
PY
