"""The archive keeps every body exactly and says where each row came from."""

import os
import re
import urllib.parse

from conftest import run_weir
from mqttclients import Device


def test_binary_and_utf16_bodies_round_trip_with_provenance(hub):
    key = hub.create_device("raw")["authentication"]["symmetricKey"]["primaryKey"]
    d = Device(hub, "raw", hub.device_token("raw", key))
    assert d.connect() == 0
    blobs = [os.urandom(512) for _ in range(5)]
    # Random bytes that happen to be UTF-8 would land in `body`; make sure they are not.
    blobs = [b"\xff" + b for b in blobs]
    for i, b in enumerate(blobs):
        assert d.publish(d.telemetry_topic(f"%24.mid=bin-{i}&%24.ct=application%2Foctet-stream"), b)
    text = "température ✓ 𝄞"
    ce = urllib.parse.quote("utf-16", safe="")
    assert d.publish(d.telemetry_topic(f"%24.mid=u16&%24.ce={ce}&%24.uid=app-7"), text.encode("utf-16-le"))
    assert d.publish(d.telemetry_topic("%24.mid=plain&iothub-creation-time-utc=2026-01-02T03%3A04%3A05Z"), b'{"temp": 1}')
    d.close()
    hub.wait_rows("archive", 7)

    rows = hub.query("archive", "SELECT message_id, body, body_bytes, system, ingest_offset, rules_version FROM t")
    by_id = {r[0]: r[1:] for r in rows}
    for i, b in enumerate(blobs):
        body, raw, system, offset, version = by_id[f"bin-{i}"]
        assert body is None and bytes(raw) == b, "binary bodies are stored byte-exact"
    body, raw, system, _, _ = by_id["u16"]
    assert (body, raw) == (text, None), "a declared UTF-16 body is decoded"
    assert system == {"content_encoding": "utf-16", "user_id": "app-7"}, "ids and content type have their own columns"
    body, raw, system, _, _ = by_id["plain"]
    assert (body, raw) == ('{"temp": 1}', None)
    assert system["iothub-creation-time-utc"] == "2026-01-02T03:04:05Z"

    offsets = [r[4] for r in rows]
    assert len(set(offsets)) == len(offsets) == 7, "ingest_offset is unique per row"
    r = run_weir("rules", "check", hub.rules)
    assert r.returncode == 0, r.stderr
    version = re.search(r"version ([0-9a-f]{12})", r.stdout).group(1)
    assert {r[5] for r in rows} == {version}, "rows carry the version `weir rules check` prints"
