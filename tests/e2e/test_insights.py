"""Window insights end to end: devices publish readings with their own `ts`, some out of
order within the allowed lateness and some later than that; the insight rows in Parquet
(latest revision per window and device) equal DuckDB's own GROUP BY over the raw archive
for every window, and late readings produce corrections with higher revisions."""

import json
import random
import time

import duckdb

from sinkdevice import device, rules_dir
from weirhub import Hub

WINDOW_MS = 10_000
RULES = """
[[endpoint]]
name = "raw"
type = "parquet"

[[endpoint]]
name = "insights"
type = "parquet"

[[route]]
name = "raw"
condition = "true"
endpoints = ["raw"]

[[route]]
name = "results"
source = "Insights"
condition = "$insight = 'temp_10s'"
endpoints = ["insights"]

[[insight]]
name = "temp_10s"
condition = "IS_NUMBER($body.temp)"
time = "$body.ts"
group_by = { device = "$connectionDeviceId" }
window = "tumbling 10s"
allowed_lateness = "2s"
aggregates = { n = "count()", avg_temp = "avg($body.temp)", max_temp = "max($body.temp)", p50 = "percentile($body.temp, 0.5)", sd = "stddev($body.temp)", first_temp = "first($body.temp)" }
"""


def publish(r, dev, i, ts, temp):
    body = json.dumps({"ts": ts, "temp": temp, "i": i}).encode()
    topic = f"devices/{dev}/messages/events/%24.mid=m{i}&%24.ct=application%2Fjson&%24.ce=utf-8"
    assert r.publish(topic, body, pkid=i % 60000 + 1) == i % 60000 + 1


def test_window_results_equal_duckdb_over_the_raw_archive(tmp_path):
    hub = Hub(tmp_path, rules_dir(tmp_path, RULES), config="[archive]\nmax_age_secs = 0.3\n").start()
    rng = random.Random(7)
    try:
        # Event time starts a minute in the past, on a window boundary.
        t0 = (int(time.time() * 1000) // WINDOW_MS) * WINDOW_MS - 60_000
        devs = ["ins-1", "ins-2"]
        conns = {d: device(hub, d) for d in devs}
        n = 0
        for d in devs:
            readings = [(t0 + k * 250, round(rng.uniform(15, 35), 2)) for k in range(200)]
            # Out of order by up to 1 s (within the 2 s lateness): shuffle runs of 4.
            for s in range(0, len(readings), 4):
                run = readings[s:s + 4]
                rng.shuffle(run)
                readings[s:s + 4] = run
            for ts, temp in readings:
                publish(conns[d], d, n, ts, temp)
                n += 1
        # Later than the lateness: the first window is closed by now (the clock is 50 s on).
        for d in devs:
            publish(conns[d], d, n, t0 + 1_234, 99.5)
            n += 1
        for c in conns.values():
            c.close()
        hub.wait_rows("raw", n, timeout=60)

        def latest():
            return hub.query("insights", """
                SELECT json_extract_string(body, '$.device') AS device,
                       json_extract_string(body, '$.window_start') AS ws,
                       max(CAST(json_extract(body, '$.revision') AS INT)) AS revs,
                       arg_max(body, CAST(json_extract(body, '$.revision') AS INT)) AS body
                FROM t GROUP BY ALL ORDER BY ALL""")

        deadline = time.time() + 60
        rows = latest()
        # 2 devices × 5 windows of 10 s; each closes 2 s after a device's clock passes it.
        while time.time() < deadline and len(rows) < 10:
            time.sleep(0.5)
            rows = latest()
        assert len(rows) == 10, rows
        con = duckdb.connect()
        con.execute(f"CREATE VIEW raw AS SELECT * FROM read_parquet('{hub.archive_glob('raw')}', hive_partitioning = true)")
        want = con.execute(f"""
            SELECT device_id,
                   strftime(make_timestamp(((CAST(json_extract(body, '$.ts') AS BIGINT) // {WINDOW_MS}) * {WINDOW_MS}) * 1000),
                            '%Y-%m-%dT%H:%M:%S.%g') || 'Z' AS ws,
                   count(*), avg(CAST(json_extract(body, '$.temp') AS DOUBLE)),
                   max(CAST(json_extract(body, '$.temp') AS DOUBLE)),
                   quantile_cont(CAST(json_extract(body, '$.temp') AS DOUBLE), 0.5),
                   stddev_samp(CAST(json_extract(body, '$.temp') AS DOUBLE)),
                   arg_min(CAST(json_extract(body, '$.temp') AS DOUBLE), CAST(json_extract(body, '$.ts') AS BIGINT))
            FROM raw GROUP BY ALL ORDER BY ALL""").fetchall()
        assert len(want) == 10
        for (dev, ws, revs, body), w in zip(rows, want):
            b = json.loads(body)
            assert (dev, ws) == (w[0], w[1]), (dev, ws, w)
            assert b["insight"] == "temp_10s" and b["window_end"] > b["window_start"]
            got = (b["n"], b["avg_temp"], b["max_temp"], b["p50"], b["sd"], b["first_temp"])
            assert got[0] == w[2], (ws, got, w)
            for g, x in zip(got[1:], w[3:]):
                assert abs(g - x) < 1e-9 * max(1, abs(x)), (ws, got, w)
            first_window = ws.startswith(time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t0 / 1000)))
            # The late reading corrected the first window once; the others were emitted once.
            assert revs == (1 if first_window else 0), (ws, revs)
        assert hub.metric("weir_insight_results_total") >= 12
    finally:
        hub.stop()


def test_a_planted_spike_is_an_anomaly_and_a_quiet_device_is_reported(tmp_path):
    rules = """
[[endpoint]]
name = "alerts"
type = "parquet"

[[route]]
name = "alerts"
source = "Insights"
condition = "true"
endpoints = ["alerts"]

[[insight]]
name = "spike"
kind = "anomaly"
value = "$body.temp"
threshold = 4
baseline = "1h"
group_by = { device = "$connectionDeviceId" }

[[insight]]
name = "quiet"
kind = "silence"
after = "2s"
group_by = { device = "$connectionDeviceId" }
"""
    hub = Hub(tmp_path, rules_dir(tmp_path, rules), config="[archive]\nmax_age_secs = 0.3\n").start()
    try:
        r = device(hub, "ins-a")
        now = int(time.time() * 1000)
        temps = [20.5 if i % 2 else 19.5 for i in range(50)] + [45.0] + [20.0] * 10
        for i, temp in enumerate(temps):
            publish(r, "ins-a", i, now + i, temp)

        def alerts():
            return hub.query("alerts", """
                SELECT json_extract_string(body, '$.insight'), json_extract_string(body, '$.device'),
                       json_extract_string(body, '$.state'), CAST(json_extract(body, '$.value') AS DOUBLE),
                       CAST(json_extract(body, '$.zscore') AS DOUBLE)
                FROM t ORDER BY ingest_offset""")

        deadline = time.time() + 30
        while time.time() < deadline and len(alerts()) < 2:
            time.sleep(0.3)
        got = alerts()
        spikes = [a for a in got if a[0] == "spike"]
        assert len(spikes) == 1 and spikes[0][1] == "ins-a" and spikes[0][3] == 45.0, got
        assert spikes[0][4] > 4
        quiet = [a for a in got if a[0] == "quiet"]
        assert [q[2] for q in quiet] == ["silent"], got
        publish(r, "ins-a", 100, now + 100, 20.0)
        deadline = time.time() + 15
        while time.time() < deadline and len(alerts()) < 3:
            time.sleep(0.3)
        assert [a[2] for a in alerts() if a[0] == "quiet"] == ["silent", "back"]
        r.close()
    finally:
        hub.stop()


def test_late_events_go_to_the_late_endpoint_instead_of_correcting(tmp_path):
    rules = RULES.replace('[[route]]\nname = "raw"', '[[endpoint]]\nname = "late_rows"\ntype = "parquet"\n\n[[route]]\nname = "raw"', 1)
    rules += 'late = "late_rows"\n'
    hub = Hub(tmp_path, rules_dir(tmp_path, rules), config="[archive]\nmax_age_secs = 0.3\n").start()
    try:
        t0 = (int(time.time() * 1000) // WINDOW_MS) * WINDOW_MS - 60_000
        r = device(hub, "late-1")
        for k in range(60):  # 15 s of readings: the first window closes
            publish(r, "late-1", k, t0 + k * 250, 20.0)
        publish(r, "late-1", 60, t0 + 1_000, 99.0)  # for the first window: late
        publish(r, "late-1", 61, t0 + 14_000, 21.0)  # within lateness: merged
        r.close()
        hub.wait_rows("late_rows", 1, timeout=30)
        late = hub.query("late_rows", "SELECT json_extract(body, '$.i'), properties FROM t")
        assert len(late) == 1 and late[0][0] == "60", late
        marks = dict(late[0][1])
        assert marks["weir-dead-letter-endpoint"] == "$insight" and marks["weir-dead-letter-route"] == "temp_10s", marks
        assert "allowed lateness" in marks["weir-dead-letter-reason"], marks
        deadline = time.time() + 30
        rows = []
        while time.time() < deadline and len(rows) < 2:
            rows = hub.query("insights", """SELECT json_extract_string(body, '$.window_start'), CAST(json_extract(body, '$.revision') AS INT),
                                             CAST(json_extract(body, '$.n') AS INT), CAST(json_extract(body, '$.max_temp') AS DOUBLE)
                                      FROM t ORDER BY ALL""")
            time.sleep(0.3)
        assert [row[1] for row in rows] == [0, 0], "no correction: the late event went elsewhere"
        assert rows[0][2:] == (40, 20.0) and rows[1][2:] == (21, 21.0), rows
        assert hub.metric("weir_insight_late_total") == 1
    finally:
        hub.stop()
