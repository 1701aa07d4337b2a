#!/usr/bin/env bash
# The end-to-end cost of insights: the same MQTT load into Weir with and without three
# insights, in the same run.
#
#   none:   one route archives every message to Parquet;
#   three:  the same route, plus a tumbling 1-minute window per device (count, avg, max,
#           p95), a hopping 5-minute window every minute per site, and a z-score anomaly
#           per device.
#
# Each run: `weir simulate` publishes N QoS 1 messages from PUBS devices; timed from the
# first publish until the engine has routed all N (and, with insights, taken all 3N
# samples). Rate = N / that time.
#
#   benches/insights.sh                 # N=200000 by default
#   N=500000 benches/insights.sh
#
# Results go to bench-out/insights.json and a table on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-200000}
PUBS=${PUBS:-50}
OUT=${OUT:-bench-out}
MQTT_PORT=${MQTT_PORT:-18852}
API_PORT=${API_PORT:-18093}
PAYLOAD='{"temp": {{rand:15:35}}, "hum": {{randint:20:80}}, "seq": {{seq}}, "site": "plant-{{randint:1:4}}", "line": "assembly-b", "status": "nominal"}'

cargo build --release -p weir --bin weir
W=target/release/weir
mkdir -p "$OUT"
TMP=$(mktemp -d)
WEIR=
cleanup() {
  [ -n "$WEIR" ] && kill "$WEIR" 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT

now() { date +%s.%N; }
metric() {
  curl -sf "http://127.0.0.1:$API_PORT/metrics" | awk -v m="$1" '$1 == m {print $2}'
}

mkdir -p "$TMP/none" "$TMP/three"
cat > "$TMP/none/r.toml" <<'RULES'
[[endpoint]]
name = "raw"
type = "parquet"

[[route]]
name = "raw"
condition = "true"
endpoints = ["raw"]
RULES
cp "$TMP/none/r.toml" "$TMP/three/r.toml"
cat >> "$TMP/three/r.toml" <<'RULES'

[[insight]]
name = "temp_1m"
condition = "IS_NUMBER($body.temp)"
group_by = { device = "$connectionDeviceId" }
window = "tumbling 1m"
allowed_lateness = "5s"
aggregates = { n = "count()", avg_temp = "avg($body.temp)", max_temp = "max($body.temp)", p95 = "percentile($body.temp, 0.95)" }

[[insight]]
name = "site_5m"
group_by = { site = "$body.site" }
window = "hopping 5m every 1m"
aggregates = { n = "count()", avg_hum = "avg($body.hum)" }

[[insight]]
name = "spike"
kind = "anomaly"
value = "$body.temp"
threshold = 4
group_by = { device = "$connectionDeviceId" }
RULES

# Runs Weir on the rules in $1 and prints N / seconds until everything is through.
run() {
  rm -rf "$TMP/weir"
  printf '[logging]\nlevel = "warn"\n' > "$TMP/weir.toml"
  "$W" serve -c "$TMP/weir.toml" --data-dir "$TMP/weir" --rules "$1" --mqtt "127.0.0.1:$MQTT_PORT" \
    --mqtts off --quic off --http "127.0.0.1:$API_PORT" & WEIR=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$API_PORT/health" >/dev/null 2>&1 && break; sleep 0.1; done
  HUB=(--api "http://127.0.0.1:$API_PORT" --data-dir "$TMP/weir" --mqtt "127.0.0.1:$MQTT_PORT")
  "$W" simulate "${HUB[@]}" --register-only --devices "$PUBS" --quiet >/dev/null
  start=$(now)
  "$W" simulate "${HUB[@]}" --devices "$PUBS" --messages $((N / PUBS)) --qos 1 --inflight 100 \
    --payload "$PAYLOAD" --json --quiet > "$OUT/insights-$2-pub.json"
  local want_samples=$3
  for _ in $(seq 6000); do
    routed=$(metric weir_engine_routed_total); samples=$(metric weir_insight_samples_total)
    if [ "${routed%.*}" -ge "$N" ] && [ "${samples%.*}" -ge "$want_samples" ]; then break; fi
    sleep 0.01
  done
  secs=$(awk "BEGIN {print $(now) - $start}")
  echo "$2 $secs $(metric weir_insight_results_total)" >> "$TMP/times"
  kill -TERM "$WEIR"; wait "$WEIR" 2>/dev/null || true; WEIR=
}

echo "== none: MQTT → log → rules → Parquet, $N messages"
run "$TMP/none" none 0
echo "== three insights: the same plus three insights, $N messages"
run "$TMP/three" three $((3 * N))

python3 - "$OUT" "$N" "$TMP/times" <<'PY'
import json, sys
out, n, times = sys.argv[1], int(sys.argv[2]), sys.argv[3]
t = {}
for line in open(times):
    name, secs, results = line.split()
    t[name] = (float(secs), results)
res = {"n": n, "none": n / t["none"][0], "three": n / t["three"][0],
       "three_results": t["three"][1],
       "publish_none": json.load(open(f"{out}/insights-none-pub.json"))["publish_rate"],
       "publish_three": json.load(open(f"{out}/insights-three-pub.json"))["publish_rate"]}
res["ratio"] = res["three"] / res["none"]
json.dump(res, open(f"{out}/insights.json", "w"))
print(f"{'run':<22}{'msg/s':>12}")
print(f"{'no insights':<22}{res['none']:>12,.0f}")
print(f"{'three insights':<22}{res['three']:>12,.0f}")
print(f"three / none: {res['ratio']:.2f}  (insight results written: {res['three_results']})")
PY
