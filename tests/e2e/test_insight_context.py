"""Device context in insights: an insight grouped by `$twin.tags.site` sees each reading
with the tags its device had when the reading entered the log. A device moves from site A
to site B mid-stream; readings before the move count for A and after it for B, never
mixed, also after a kill -9 that makes the hub rebuild its open windows by replaying the
log (when the registry only knows the new site)."""

import json
import signal
import time

from test_insight_recovery import connect, iso
from sinkdevice import rules_dir
from weirhub import Hub

WINDOW_MS = 2_000
PER_WINDOW = 20  # readings per device and window, 100 ms apart
RULES = """
[[endpoint]]
name = "raw"
type = "parquet"

[[endpoint]]
name = "changes"
type = "parquet"

[[endpoint]]
name = "insights"
type = "parquet"

[[route]]
name = "raw"
condition = "true"
endpoints = ["raw"]

[[route]]
name = "changes"
source = "TwinChangeEvents"
condition = "true"
endpoints = ["changes"]

[[route]]
name = "results"
source = "Insights"
condition = "true"
endpoints = ["insights"]

[[insight]]
name = "by_site"
condition = "IS_NUMBER($body.v)"
time = "$body.ts"
group_by = { site = "$twin.tags.site" }
window = "tumbling 2s"
allowed_lateness = "1s"
aggregates = { n = "count()", total = "sum($body.v)" }
"""


def publish(r, dev, i, ts, v):
    body = json.dumps({"ts": ts, "v": v}).encode()
    topic = f"devices/{dev}/messages/events/%24.mid={dev}-{i}&%24.ct=application%2Fjson&%24.ce=utf-8"
    assert r.publish(topic, body, pkid=i % 60000 + 1) == i % 60000 + 1


def test_a_tag_change_moves_later_readings_to_the_new_group_also_on_replay(tmp_path):
    config = "[archive]\nmax_age_secs = 0.3\n"
    hub = Hub(tmp_path, rules_dir(tmp_path, RULES), config=config).start()
    devices = ["mover", "stayer"]
    keys = {d: hub.create_device(d, tags={"site": "A"})["authentication"]["symmetricKey"]["primaryKey"]
            for d in devices}
    t0 = (int(time.time() * 1000) // WINDOW_MS) * WINDOW_MS - 60_000
    try:
        conns = {d: connect(hub, d, keys[d]) for d in devices}
        k = 0
        # Windows 0-4 at site A for both; the mover's value is 10, the stayer's 1.
        for _ in range(5 * PER_WINDOW):
            for d in devices:
                publish(conns[d], d, k, t0 + k * 100, 10 if d == "mover" else 1)
            k += 1
        r = hub.call("PATCH", "/twins/mover", {"tags": {"site": "B"}})
        assert r.status_code == 200, r.text
        hub.wait_rows("changes", 1, timeout=20)
        # Windows 5-9: the mover is at site B now.
        for _ in range(5 * PER_WINDOW):
            for d in devices:
                publish(conns[d], d, k, t0 + k * 100, 10 if d == "mover" else 1)
            k += 1
        # Kill with the last windows open: the replay reads the mover's readings again,
        # with the registry saying B for all of them.
        hub.stop(sig=signal.SIGKILL)
        hub.start()
        for c in conns.values():
            c.close()
        hub.wait_rows("raw", 2 * k, timeout=60)

        def latest():
            rows = hub.query("insights", """
                SELECT json_extract_string(body, '$.site'), json_extract_string(body, '$.window_start'),
                       CAST(json_extract(body, '$.revision') AS INT), body FROM t""")
            out = {}
            for site, ws, rev, body in rows:
                if rev >= out.get((site, ws), (-1, None))[0]:
                    out[(site, ws)] = (rev, json.loads(body))
            return rows, out

        want = {}
        for w in range(10):
            ws = iso(t0 + w * WINDOW_MS)
            if w < 5:
                want[("A", ws)] = (2 * PER_WINDOW, PER_WINDOW * 11)
            else:
                want[("A", ws)] = (PER_WINDOW, PER_WINDOW * 1)
                want[("B", ws)] = (PER_WINDOW, PER_WINDOW * 10)
        deadline = time.time() + 60
        rows, got = latest()
        while time.time() < deadline and set(got) != set(want):
            time.sleep(0.5)
            rows, got = latest()
        time.sleep(2)
        rows, got = latest()
        assert set(got) == set(want), sorted(set(got) ^ set(want))
        for key, (n, total) in want.items():
            rev, body = got[key]
            assert (body["n"], body["total"]) == (n, total), (key, body)
        seen = [(s, ws, rev) for s, ws, rev, _ in rows]
        assert len(seen) == len(set(seen)), "a result was written twice"
    finally:
        hub.stop()
