"""Telemetry from real MQTT clients over TLS, authenticated with SAS, into Parquet."""

import json
import subprocess
import urllib.parse

import pyarrow.parquet as pq

from mqttclients import Device


def bag(pairs):
    return "&".join(f"{urllib.parse.quote(k, safe='')}={urllib.parse.quote(v, safe='')}" for k, v in pairs)


def test_paho_and_mosquitto_pub_over_tls_reach_parquet(hub):
    keys = {}
    for dev, tags in [("dev-paho", {"site": "berlin"}), ("dev-mosq", {"site": "paris"}), ("lab-1", None)]:
        keys[dev] = hub.create_device(dev, tags=tags)["authentication"]["symmetricKey"]["primaryKey"]

    paho = Device(hub, "dev-paho", hub.device_token("dev-paho", keys["dev-paho"]))
    assert paho.connect() == 0
    for seq in range(50):
        props = bag([
            ("$.mid", f"mid-{seq}"), ("$.cid", f"corr-{seq}"), ("$.ct", "application/json"), ("$.ce", "utf-8"),
            ("color", "blue sky"), ("path", "a/b&c=d%"), ("seq", str(seq)),
        ])
        body = json.dumps({"temp": 20 + seq * 0.5, "hum": seq, "seq": seq})
        assert paho.publish(paho.telemetry_topic(props), body), f"message {seq} not acknowledged"
    paho.close()

    lines = "\n".join(json.dumps({"temp": 40.5, "hum": 7, "seq": 100 + i}) for i in range(10))
    token = hub.device_token("dev-mosq", keys["dev-mosq"])
    r = subprocess.run(
        ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(hub.mqtts_port), "--cafile", hub.ca,
         "-i", "dev-mosq", "-u", hub.username("dev-mosq"), "-P", token, "-q", "1",
         "-t", "devices/dev-mosq/messages/events/%24.ct=application%2Fjson&kind=plain%2Bsimple", "-l"],
        input=lines, text=True, capture_output=True, timeout=30,
    )
    assert r.returncode == 0, r.stderr

    lab = Device(hub, "lab-1", hub.device_token("lab-1", keys["lab-1"]))
    assert lab.connect() == 0
    assert lab.publish(lab.telemetry_topic(), json.dumps({"temp": 99, "hum": 1, "seq": 500}))
    lab.close()

    assert hub.wait_rows("archive", 61) == 61
    rows = hub.query("archive", """
        SELECT device_id, message_id, correlation_id, content_type, properties, temp, hum, seq, body,
               enqueued_time, date, hour
        FROM t ORDER BY device_id, seq""")
    by_seq = {(r[0], r[7]): r for r in rows}
    assert len(by_seq) == 61, "every message exactly once"
    for seq in range(50):
        dev, mid, cid, ct, props, temp, hum, s, body, enq, date, hour = by_seq[("dev-paho", seq)]
        assert (mid, cid, ct) == (f"mid-{seq}", f"corr-{seq}", "application/json")
        assert props == {"color": "blue sky", "path": "a/b&c=d%", "seq": str(seq)}
        assert temp == 20 + seq * 0.5 and hum == seq
        assert json.loads(body)["seq"] == seq
        assert str(date) == enq.strftime("%Y-%m-%d") and int(hour) == enq.hour
    for i in range(10):
        dev, mid, cid, ct, props, temp, hum, s, body, enq, date, hour = by_seq[("dev-mosq", 100 + i)]
        # One topic for every line, so no $.mid: equal ids would be deduplicated.
        assert mid is None and cid is None and ct == "application/json"
        assert props == {"kind": "plain+simple"}, "'+' is not a space in a property bag"
        assert (temp, hum) == (40.5, 7)

    # Hot: temp > 30 and not lab-1, enriched with the device's site tag.
    hot = hub.query("hot", "SELECT device_id, temp, properties['site'] FROM t ORDER BY device_id, temp")
    expected_paho = [20 + s * 0.5 for s in range(50) if 20 + s * 0.5 > 30]
    assert [r[1] for r in hot if r[0] == "dev-paho"] == expected_paho
    assert all(r[2] == "berlin" for r in hot if r[0] == "dev-paho")
    assert [r for r in hot if r[0] == "dev-mosq"] == [("dev-mosq", 40.5, "paris")] * 10
    assert not [r for r in hot if r[0] == "lab-1"]

    # pyarrow sees the documented schema.
    files = list((hub.data / "archive" / "archive").rglob("*.parquet"))
    schema = pq.read_schema(files[0])
    assert str(schema.field("enqueued_time").type) == "timestamp[ms, tz=UTC]"
    assert str(schema.field("properties").type).startswith("map<string, string")
    assert str(schema.field("temp").type) == "double" and str(schema.field("hum").type) == "int64"
    for f in files:
        parts = f.relative_to(hub.data / "archive" / "archive").parts
        assert parts[0].startswith("date=") and parts[1].startswith("hour=")
    assert not list(hub.data.rglob("*.inprogress"))


def test_typed_columns_are_null_when_missing_or_mistyped(hub):
    key = hub.create_device("typed")["authentication"]["symmetricKey"]["primaryKey"]
    d = Device(hub, "typed", hub.device_token("typed", key))
    assert d.connect() == 0
    for body in ['{"temp": "hot", "hum": 2.5, "seq": 1}', '{"seq": 2}', "not json", '{"temp": 1e2, "hum": 3, "seq": 4}']:
        assert d.publish(d.telemetry_topic(), body)
    d.close()
    hub.wait_rows("archive", 4)
    rows = hub.query("archive", "SELECT body, temp, hum, seq FROM t ORDER BY enqueued_time, body")
    got = {r[0]: r[1:] for r in rows}
    assert got['{"temp": "hot", "hum": 2.5, "seq": 1}'] == (None, None, 1)
    assert got['{"seq": 2}'] == (None, None, 2)
    assert got["not json"] == (None, None, None)
    assert got['{"temp": 1e2, "hum": 3, "seq": 4}'] == (100.0, 3, 4)
    assert hub.metrics()["weir_engine_dead_letters_total"] >= 1, "the malformed body is counted"
