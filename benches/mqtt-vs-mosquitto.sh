#!/usr/bin/env bash
# Runs the same load against mosquitto, rumqttd and Weir on this machine, in one run, and
# prints the ratios: 100 publishers → 1 subscriber (the brokers) vs 100 publishers → rules
# → Parquet (Weir), at QoS 0 and QoS 1, plus the memory of idle connections. rumqttd is
# run when it is on PATH (`cargo install rumqttd --version 0.20.0`, ~5 min here; without
# `--locked`, see ../shared/docs/environment-notes.md); the summary says when it was not.
#
#   benches/mqtt-vs-mosquitto.sh                 # defaults below
#   PUBS=100 MSGS=20000 IDLE=2000 benches/mqtt-vs-mosquitto.sh
#
# Needs mosquitto (apt-get install -y mosquitto). Results go to bench-out/.
set -euo pipefail
cd "$(dirname "$0")/.."
PUBS=${PUBS:-100}
MSGS=${MSGS:-20000}
IDLE=${IDLE:-2000}
OUT=${OUT:-bench-out}
MOSQ_PORT=${MOSQ_PORT:-18830}
RUMQ_PORT=${RUMQ_PORT:-18832}
WEIR_PORT=${WEIR_PORT:-18831}
API_PORT=${API_PORT:-18080}
PAYLOAD='{"temp": {{rand:15:35}}, "hum": {{randint:20:80}}, "seq": {{seq}}, "site": "plant-7", "line": "assembly-b", "status": "nominal"}'

command -v mosquitto >/dev/null || { echo "mosquitto is missing: apt-get install -y mosquitto" >&2; exit 2; }
cargo build --release -p weir
W=target/release/weir
mkdir -p "$OUT"
TMP=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$TMP"; }
trap cleanup EXIT
ulimit -n 65536 2>/dev/null || true

rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }

idle_cost() { # pid, simulate args... → KiB per idle connection; run it on a fresh server
  local pid=$1; shift
  local before after
  sleep 1
  before=$(rss_kib "$pid")
  "$W" simulate "$@" --devices "$IDLE" --idle --duration 12 --quiet --json > "$TMP/idle.json" &
  local sim=$!
  sleep 9
  after=$(rss_kib "$pid")
  # A connect that times out under the burst exits 1; the cost is per connection made.
  wait "$sim" || true
  python3 -c "import json,sys; r=json.load(open('$TMP/idle.json')); print(json.dumps({'connections': r['connected'], 'rss_before_kib': $before, 'rss_after_kib': $after, 'kib_per_connection': ($after-$before)/max(1,r['connected'])}))"
}

echo "== mosquitto $(mosquitto -h 2>/dev/null | head -1 | awk '{print $3}') on 127.0.0.1:$MOSQ_PORT"
cat > "$TMP/mosquitto.conf" <<CONF
listener $MOSQ_PORT 127.0.0.1
allow_anonymous true
user root
set_tcp_nodelay true
max_inflight_messages 1000
max_queued_messages 1000000
persistence false
log_dest none
CONF
mosquitto -c "$TMP/mosquitto.conf" & PIDS+=($!); MOSQ=$!
sleep 0.5
for q in 0 1; do
  "$W" simulate --broker --mqtt "127.0.0.1:$MOSQ_PORT" --devices "$PUBS" --messages "$MSGS" --qos "$q" \
    --subscribe '#' --inflight 100 --payload "$PAYLOAD" --json --quiet > "$OUT/mosquitto-qos$q.json"
  echo "qos $q: $(cat "$OUT/mosquitto-qos$q.json")"
done
kill "$MOSQ"; wait "$MOSQ" 2>/dev/null || true
mosquitto -c "$TMP/mosquitto.conf" & PIDS+=($!); MOSQ=$!
sleep 0.5
idle_cost "$MOSQ" --broker --mqtt "127.0.0.1:$MOSQ_PORT" > "$OUT/mosquitto-idle.json"
echo "idle: $(cat "$OUT/mosquitto-idle.json")"
kill "$MOSQ"; wait "$MOSQ" 2>/dev/null || true

if command -v rumqttd >/dev/null; then
  echo "== rumqttd on 127.0.0.1:$RUMQ_PORT"
  # Its sample configuration with one MQTT 3.1.1 server on loopback, the same in-flight
  # window as the clients, and no prometheus or v5 listener.
  cat > "$TMP/rumqttd.toml" <<CONF
id = 0
[router]
id = 0
max_connections = 20000
max_outgoing_packet_count = 200
max_segment_size = 104857600
max_segment_count = 10
[v4.1]
name = "v4-1"
listen = "127.0.0.1:$RUMQ_PORT"
next_connection_delay_ms = 1
    [v4.1.connections]
    connection_timeout_ms = 60000
    max_payload_size = 20480
    max_inflight_count = 100
    dynamic_filters = true
CONF
  for q in 0 1; do
    rumqttd -c "$TMP/rumqttd.toml" >/dev/null 2>&1 & PIDS+=($!); RUMQ=$!
    sleep 1
    "$W" simulate --broker --mqtt "127.0.0.1:$RUMQ_PORT" --devices "$PUBS" --messages "$MSGS" --qos "$q" \
      --subscribe '#' --inflight 100 --payload "$PAYLOAD" --json --quiet > "$OUT/rumqttd-qos$q.json" || true
    echo "qos $q: $(cat "$OUT/rumqttd-qos$q.json")"
    kill "$RUMQ"; wait "$RUMQ" 2>/dev/null || true
  done
else
  echo "== rumqttd is not on PATH: not measured (cargo install rumqttd --version 0.20.0)"
  rm -f "$OUT"/rumqttd-qos*.json
fi

echo "== weir on 127.0.0.1:$WEIR_PORT"
HUB=(--api "http://127.0.0.1:$API_PORT" --data-dir "$TMP/weir" --mqtt "127.0.0.1:$WEIR_PORT")
start_weir() { # fsync policy
  cat > "$TMP/weir.toml" <<CONF
[archive]
max_age_secs = 0.25
[log]
fsync = "$1"
[logging]
level = "warn"
CONF
  "$W" serve -c "$TMP/weir.toml" --data-dir "$TMP/weir" --rules benches/rules --mqtt "127.0.0.1:$WEIR_PORT" \
    --mqtts off --http "127.0.0.1:$API_PORT" & PIDS+=($!); WEIR=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$API_PORT/health" >/dev/null 2>&1 && break; sleep 0.1; done
}
start_weir batch
for q in 0 1; do
  "$W" simulate "${HUB[@]}" --devices "$PUBS" --messages "$MSGS" --qos "$q" --inflight 100 \
    --payload "$PAYLOAD" --wait-archived --json --quiet > "$OUT/weir-qos$q.json"
  echo "qos $q (fsync batch): $(cat "$OUT/weir-qos$q.json")"
done
"$W" simulate "${HUB[@]}" --devices 100 --rate 20000 --duration 10 --messages 0 --qos 1 --payload "$PAYLOAD" \
  --json --quiet > "$OUT/weir-qos1-20k.json"
echo "qos 1 at 20k msg/s: $(cat "$OUT/weir-qos1-20k.json")"
kill -TERM "$WEIR"; wait "$WEIR" 2>/dev/null || true
for policy in always never; do
  start_weir "$policy"
  "$W" simulate "${HUB[@]}" --devices "$PUBS" --messages "$MSGS" --qos 1 --inflight 100 \
    --payload "$PAYLOAD" --wait-archived --json --quiet > "$OUT/weir-qos1-$policy.json"
  echo "qos 1 (fsync $policy): $(cat "$OUT/weir-qos1-$policy.json")"
  kill -TERM "$WEIR"; wait "$WEIR" 2>/dev/null || true
done
# A fresh hub for the memory of idle connections, with the devices registered first.
start_weir batch
"$W" simulate "${HUB[@]}" --prefix idle- --devices "$IDLE" --register-only --quiet >/dev/null
idle_cost "$WEIR" "${HUB[@]}" --prefix idle- > "$OUT/weir-idle.json"
echo "idle: $(cat "$OUT/weir-idle.json")"
kill -TERM "$WEIR"; wait "$WEIR" 2>/dev/null || true

python3 - "$OUT" <<'PY'
import json, sys, platform, os
out = sys.argv[1]
j = lambda n: json.load(open(f"{out}/{n}.json"))
mq0, mq1, w0, w1 = j("mosquitto-qos0"), j("mosquitto-qos1"), j("weir-qos0"), j("weir-qos1")
mi, wi, w20 = j("mosquitto-idle"), j("weir-idle"), j("weir-qos1-20k")
wa, wn = j("weir-qos1-always"), j("weir-qos1-never")
m0, m1 = mq0["subscriber"]["rate"], mq1["subscriber"]["rate"]
a0, a1 = w0["archived"]["rate"], w1["archived"]["rate"]
print()
print(f"machine: {os.cpu_count()} cores, {platform.machine()}, load generator on the same machine")
print(f"QoS 0  mosquitto → subscriber {m0:>10,.0f} msg/s   weir → rules → Parquet {a0:>10,.0f} msg/s   ratio {a0/m0:.2f}")
print(f"QoS 1  mosquitto → subscriber {m1:>10,.0f} msg/s   weir → rules → Parquet {a1:>10,.0f} msg/s   ratio {a1/m1:.2f}  (durable, fsync batch)")
for name, r in [("always", wa), ("never", wn)]:
    x = r["archived"]["rate"]
    print(f"QoS 1  fsync {name:<6}                                  weir → rules → Parquet {x:>10,.0f} msg/s   ratio {x/m1:.2f}")
def rumqttd(q):
    try:
        return j(f"rumqttd-qos{q}")["subscriber"]["rate"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
r0, r1 = rumqttd(0), rumqttd(1)
for q, r, a in ((0, r0, a0), (1, r1, a1)):
    if r:
        print(f"QoS {q}  rumqttd → subscriber  {r:>10,.0f} msg/s   weir → rules → Parquet {a:>10,.0f} msg/s   ratio {a/r:.2f}")
    else:
        print(f"QoS {q}  rumqttd: not measured")
l = w20.get("latency_ms") or {}
print(f"QoS 1 at ~20k msg/s: publish→PUBACK p50 {l.get('p50')} ms  p99 {l.get('p99')} ms  max {l.get('max')} ms")
print(f"idle connection RSS: mosquitto {mi['kib_per_connection']:.2f} KiB   weir {wi['kib_per_connection']:.2f} KiB")
json.dump({"mosquitto_qos0": m0, "mosquitto_qos1": m1, "weir_qos0": a0, "weir_qos1": a1,
           "ratio_qos0": a0/m0, "ratio_qos1": a1/m1,
           "rumqttd_qos0": r0, "rumqttd_qos1": r1,
           "ratio_rumqttd_qos0": a0/r0 if r0 else None, "ratio_rumqttd_qos1": a1/r1 if r1 else None,
          "weir_qos1_always": wa["archived"]["rate"], "weir_qos1_never": wn["archived"]["rate"],
          "weir_qos1_full_speed_latency_ms": w1.get("latency_ms"), "weir_qos1_20k_latency_ms": l,
           "idle_kib_mosquitto": mi["kib_per_connection"], "idle_kib_weir": wi["kib_per_connection"]},
          open(f"{out}/summary.json", "w"), indent=2)
PY
