"""Insights across kill -9: the hub is killed while windows are open and results are being
written, and restarted; it rebuilds the open windows by replaying its log, and every
(window, device, revision) lands in the archive exactly once, with the latest revisions
equal to DuckDB's GROUP BY over the raw archive."""

import json
import signal
import time

import duckdb

from rawmqtt import Raw
from sinkdevice import rules_dir
from weirhub import Hub

WINDOW_MS = 2_000
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
condition = "true"
endpoints = ["insights"]

[[insight]]
name = "t2"
condition = "IS_NUMBER($body.temp)"
time = "$body.ts"
group_by = { device = "$connectionDeviceId" }
window = "tumbling 2s"
allowed_lateness = "1s"
aggregates = { n = "count()", total = "sum($body.temp)", top = "max($body.temp)" }
"""
DEVICES = ["rk-1", "rk-2", "rk-3"]
PER_DEVICE = 400  # 100 ms apart: 40 s of event time, 20 windows per device


def connect(hub, name, key):
    r = Raw(hub.mqtt_port, timeout=10)
    assert r.connect(name, hub.username(name), hub.device_token(name, key)) == 0
    return r


def publish(r, dev, i, ts, temp):
    body = json.dumps({"ts": ts, "temp": temp}).encode()
    topic = f"devices/{dev}/messages/events/%24.mid={dev}-{i}&%24.ct=application%2Fjson&%24.ce=utf-8"
    assert r.publish(topic, body, pkid=i % 60000 + 1) == i % 60000 + 1


def results(hub):
    return hub.query("insights", """
        SELECT json_extract_string(body, '$.device') AS device,
               json_extract_string(body, '$.window_start') AS ws,
               CAST(json_extract(body, '$.revision') AS INT) AS rev,
               body
        FROM t ORDER BY ALL""")


def test_insight_rows_are_neither_lost_nor_duplicated_across_kill_9(tmp_path):
    # The duplicate filter is off: it would drop a result written twice within its window,
    # and this test is about the insights' own bookkeeping.
    config = "[archive]\nmax_age_secs = 0.3\n[dedupe]\nwindow_secs = 0\n"
    hub = Hub(tmp_path, rules_dir(tmp_path, RULES), config=config).start()
    keys = {d: hub.create_device(d)["authentication"]["symmetricKey"]["primaryKey"] for d in DEVICES}
    t0 = (int(time.time() * 1000) // WINDOW_MS) * WINDOW_MS - 60_000
    temp = lambda d, k: round(10 + DEVICES.index(d) * 5 + (k % 17) * 0.25, 2)
    sent = 0
    try:
        conns = {d: connect(hub, d, keys[d]) for d in DEVICES}
        # First half: 10 windows per device; 9 of them close on the devices' own clocks.
        # A pause after the first 5 lets the hub store a checkpoint in between.
        for k in range(PER_DEVICE // 2):
            if k == PER_DEVICE // 4:
                time.sleep(2.5)
            for d in DEVICES:
                publish(conns[d], d, k, t0 + k * 100, temp(d, k))
                sent += 1
        deadline = time.time() + 10
        while time.time() < deadline and hub.metric("weir_insight_results_total") < 27:
            time.sleep(0.02)
        assert hub.metric("weir_insight_results_total") >= 27
        # Window 9 of each device is still open (it closes a second of wall-clock time
        # later): kill -9 now.
        hub.stop(sig=signal.SIGKILL)
        hub.start()
        hub.wait_log("insights resume by replay", timeout=10)
        conns = {d: connect(hub, d, keys[d]) for d in DEVICES}
        for k in range(PER_DEVICE // 2, PER_DEVICE):
            for d in DEVICES:
                publish(conns[d], d, k, t0 + k * 100, temp(d, k))
                sent += 1
        # A late reading for each device's first window, closed before the kill: one
        # correction (revision 1), written once.
        for d in DEVICES:
            publish(conns[d], d, PER_DEVICE, t0 + 500, 99.0)
            sent += 1
        for c in conns.values():
            c.close()
        hub.wait_rows("raw", sent, timeout=60)

        def complete(rows):
            latest = {}
            for dev, ws, rev, _ in rows:
                latest[(dev, ws)] = max(rev, latest.get((dev, ws), -1))
            firsts = [v for (dev, ws), v in latest.items() if ws == iso(t0)]
            return len(latest) == len(DEVICES) * 20 and firsts == [1] * len(DEVICES)

        deadline = time.time() + 60
        rows = results(hub)
        while time.time() < deadline and not complete(rows):
            time.sleep(0.5)
            rows = results(hub)
        assert complete(rows), rows
        time.sleep(2)  # nothing more may come
        rows = results(hub)
        keys_seen = [(dev, ws, rev) for dev, ws, rev, _ in rows]
        assert len(keys_seen) == len(set(keys_seen)), "a result was written twice"
        by_window = {}
        for dev, ws, rev, body in rows:
            by_window.setdefault((dev, ws), []).append((rev, json.loads(body)))
        for (dev, ws), revs in by_window.items():
            assert sorted(r for r, _ in revs) == list(range(len(revs))), (dev, ws, "a revision is missing")
        con = duckdb.connect()
        con.execute(f"CREATE VIEW raw AS SELECT * FROM read_parquet('{hub.archive_glob('raw')}', hive_partitioning = true)")
        want = con.execute(f"""
            SELECT device_id,
                   strftime(make_timestamp(((CAST(json_extract(body, '$.ts') AS BIGINT) // {WINDOW_MS}) * {WINDOW_MS}) * 1000),
                            '%Y-%m-%dT%H:%M:%S.%g') || 'Z' AS ws,
                   count(*), sum(CAST(json_extract(body, '$.temp') AS DOUBLE)),
                   max(CAST(json_extract(body, '$.temp') AS DOUBLE))
            FROM raw GROUP BY ALL ORDER BY ALL""").fetchall()
        assert len(want) == len(DEVICES) * 20
        for dev, ws, n, total, top in want:
            rev, b = max(by_window[(dev, ws)], key=lambda r: r[0])
            assert (b["n"], b["top"]) == (n, top), (dev, ws, b, n, top)
            assert abs(b["total"] - total) < 1e-9 * max(1, abs(total)), (dev, ws, b, total)
    finally:
        hub.stop()


def iso(ms):
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000)) + f".{ms % 1000:03d}Z"
