"""Weir on timely's cluster (decision 037): two and three processes on loopback, devices
spread over them, `kill -9` of one process mid-load and its restart. Every acknowledged
message is archived exactly once (DuckDB over every process's archive), a route with a
condition holds exactly the matching rows, and window insights equal DuckDB's GROUP BY
over the raw archive, as in one process.

Each device is registered through one process; the registry is the same on every
process (decision 039), so it connects to any of them."""

import base64
import json
import os
import signal
import ssl
import struct
import threading
import time

import duckdb
import paho.mqtt.client as paho
import pytest

import certs
from rawmqtt import Raw, puback_packet, publish_packet, subscribe_packet
from sinkdevice import rules_dir
from test_x509 import paho_connack
from weirhub import Hub, free_port

WINDOW_MS = 10_000
READINGS = 240
RULES = """
[[endpoint]]
name = "raw"
type = "parquet"

[[endpoint]]
name = "hot"
type = "parquet"

[[endpoint]]
name = "insights"
type = "parquet"

[[route]]
name = "raw"
condition = "true"
endpoints = ["raw"]

[[route]]
name = "hot"
condition = "$body.temp > 50"
endpoints = ["hot"]

[[route]]
name = "results"
source = "Insights"
condition = "$insight = 'per_10s'"
endpoints = ["insights"]

[[insight]]
name = "per_10s"
condition = "IS_NUMBER($body.temp)"
time = "$body.ts"
group_by = { device = "$connectionDeviceId" }
window = "tumbling 10s"
allowed_lateness = "2s"
aggregates = { n = "count()", max_temp = "max($body.temp)" }
"""


def start_cluster(tmp_path, n, workers, rules=RULES, config="[archive]\nmax_age_secs = 0.3\n", each=lambda i: {}):
    """`n` processes on loopback; `each(i)` gives process `i`'s own `Hub` arguments."""
    rules = rules_dir(tmp_path, rules)
    hosts = tmp_path / "hosts"
    hosts.write_text("".join(f"127.0.0.1:{free_port()}\n" for _ in range(n)))
    hubs = []
    for i in range(n):
        d = tmp_path / f"p{i}"
        d.mkdir()
        hubs.append(Hub(d, rules, workers=workers, config=config,
                        extra_args=["--process", str(i), "--hosts", str(hosts)], **each(i)))
    for h in hubs:
        h.start()
    for h in hubs:
        assert h.wait_log("cluster dataflow running", timeout=30), h.log_text()[-3000:]
    return hubs


def register(hubs, device, on):
    """Registers `device` through process `on` and waits until every process has it."""
    keys = [base64.b64encode(os.urandom(32)).decode() for _ in range(2)]
    body = {"deviceId": device, "authentication": {"type": "sas", "symmetricKey": {
        "primaryKey": keys[0], "secondaryKey": keys[1]}}}
    r = hubs[on].call("PUT", f"/devices/{device}", body)
    assert r.status_code == 200, r.text
    etag = r.json()["etag"]
    for h in hubs:
        assert wait_for(lambda: h.call("GET", f"/devices/{device}").json().get("etag") == etag), \
            f"{device} registered on process {on} did not reach {h.data}"
    return keys[0]


def sql(hubs, sql_text):
    con = duckdb.connect()
    for name in ("raw", "hot", "insights"):
        globs = [h.archive_glob(name) for h in hubs if list((h.data / "archive" / name).rglob("*.parquet"))]
        if globs:
            con.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet({globs!r}, hive_partitioning = true)")
        else:
            con.execute(f"CREATE VIEW {name} AS SELECT NULL::VARCHAR AS device_id, NULL::VARCHAR AS body WHERE false")
    return con.execute(sql_text).fetchall()


class Device(threading.Thread):
    """Publishes READINGS numbered readings at QoS 1, each waiting for its PUBACK; when
    its process goes away it connects to the next one and sends the unacknowledged
    reading again (same message id)."""

    def __init__(self, hubs, name, key, home, t0, killed):
        super().__init__(daemon=True)
        self.hubs, self.name, self.key, self.home, self.t0 = hubs, name, key, home, t0
        self.killed = killed
        self.acked = []
        self.acked_during_outage = 0
        self.moved = False
        self.error = None

    def connect(self, i):
        h = self.hubs[i]
        r = Raw(h.mqtt_port, timeout=10)
        assert r.connect(self.name, h.username(self.name), h.device_token(self.name, self.key)) == 0
        return r

    def run(self):
        try:
            at = self.home
            r = self.connect(at)
            k = 0
            while k <= READINGS:
                # The last reading is far ahead in event time: it closes every window before it.
                ts = self.t0 + (k * 125 if k < READINGS else 100_000)
                temp = (k * 7) % 100
                body = json.dumps({"ts": ts, "temp": temp, "k": k}).encode()
                topic = f"devices/{self.name}/messages/events/%24.mid={self.name}-{k}"
                try:
                    r.publish(topic, body, pkid=k % 60000 + 1)
                except (AssertionError, OSError):
                    r.close()
                    at = (at + 1) % len(self.hubs)
                    self.moved = True
                    r = self.connect(at)
                    continue
                self.acked.append(f"{self.name}-{k}")
                if self.killed.is_set():
                    self.acked_during_outage += 1
                k += 1
                time.sleep(0.01)
            r.close()
        except Exception as e:  # noqa: BLE001 - reported by the test
            self.error = e


@pytest.mark.parametrize("processes,workers", [(2, 2), (3, 1)])
def test_kill_9_of_one_process_mid_load_loses_and_repeats_nothing(tmp_path, processes, workers):
    hubs = start_cluster(tmp_path, processes, workers)
    victim = 1
    try:
        t0 = (int(time.time() * 1000) // WINDOW_MS) * WINDOW_MS - 60_000
        names = [f"cl-{i}" for i in range(2 * processes)]
        keys = {d: register(hubs, d, on=i % processes) for i, d in enumerate(names)}
        killed = threading.Event()
        devices = [Device(hubs, d, keys[d], i % processes, t0, killed) for i, d in enumerate(names)]
        for d in devices:
            d.start()
        total = len(names) * (READINGS + 1)
        deadline = time.time() + 60
        # Mid-load: a third acknowledged and the dataflow archiving.
        while time.time() < deadline and (sum(len(d.acked) for d in devices) < total // 3
                                          or not sql(hubs, "SELECT 1 FROM raw LIMIT 1")):
            time.sleep(0.01)
        assert any(d.is_alive() for d in devices), "the load ended before the kill"
        hubs[victim].proc.send_signal(signal.SIGKILL)
        hubs[victim].proc.wait()
        killed.set()
        time.sleep(1.5)
        hubs[victim].start()
        killed.clear()
        for d in devices:
            d.join(timeout=120)
        assert all(d.error is None for d in devices), [d.error for d in devices]
        acked = {m for d in devices for m in d.acked}
        assert len(acked) == total
        assert any(d.moved for d in devices), "devices of the killed process moved to another"
        assert sum(d.acked_during_outage for d in devices) > 0, "the others kept acknowledging"
        for h in hubs:
            if h is not hubs[victim]:
                assert h.metric("weir_gateway_messages_total") > 0, "every process took messages"
        snap = hubs[0].call("GET", "/dashboard/snapshot").json()["cluster"]["processes"]
        assert [p["process"] for p in snap] == list(range(processes))
        assert sum(p["partitions"] for p in snap) == 64 and all(p["partitions"] > 0 for p in snap)

        deadline = time.time() + 90
        rows = []
        while time.time() < deadline:
            rows = sql(hubs, "SELECT json_extract_string(body, '$.k'), device_id FROM raw")
            if len(rows) >= total:
                break
            time.sleep(0.5)
        got = sql(hubs, "SELECT device_id || '-' || json_extract_string(body, '$.k') AS m, count(*) FROM raw GROUP BY m")
        counts = dict(got)
        missing = acked - set(counts)
        assert not missing, f"{len(missing)} acknowledged messages not archived: {sorted(missing)[:10]}"
        repeated = {m: c for m, c in counts.items() if c > 1}
        assert not repeated, f"archived more than once: {list(repeated.items())[:10]}"
        # Every process read its own log: together at least every message once.
        assert sum(h.metric("weir_engine_events_total") for h in hubs) >= len(acked)

        # The conditional route: exactly the raw rows with temp > 50.
        deadline = time.time() + 30
        want_hot = {m for (m,) in sql(hubs, "SELECT device_id || '-' || json_extract_string(body, '$.k') FROM raw WHERE CAST(json_extract(body, '$.temp') AS INT) > 50")}
        got_hot = []
        while time.time() < deadline:
            got_hot = [m for (m,) in sql(hubs, "SELECT device_id || '-' || json_extract_string(body, '$.k') FROM hot")]
            if len(got_hot) >= len(want_hot):
                break
            time.sleep(0.5)
        assert sorted(got_hot) == sorted(want_hot)

        # Insights: the latest revision of every (device, window) equals DuckDB over raw.
        windows = READINGS * 125 // WINDOW_MS
        query = """
            SELECT json_extract_string(body, '$.device') AS device,
                   json_extract_string(body, '$.window_start') AS ws,
                   arg_max(body, CAST(json_extract(body, '$.revision') AS INT)) AS body
            FROM insights GROUP BY ALL ORDER BY ALL"""
        deadline = time.time() + 60
        results = []
        while time.time() < deadline:
            results = [r for r in sql(hubs, query) if json.loads(r[2])["window_start"] < ws_text(t0 + windows * WINDOW_MS)]
            if len(results) >= len(names) * windows:
                break
            time.sleep(0.5)
        want = sql(hubs, f"""
            SELECT device_id, count(*), max(CAST(json_extract(body, '$.temp') AS INT))
            FROM raw WHERE CAST(json_extract(body, '$.ts') AS BIGINT) < {t0 + windows * WINDOW_MS}
            GROUP BY device_id, CAST(json_extract(body, '$.ts') AS BIGINT) // {WINDOW_MS}
            ORDER BY ALL""")
        got = sorted((dev, json.loads(b)["n"], json.loads(b)["max_temp"]) for dev, _, b in results)
        assert len(got) == len(names) * windows, results
        assert got == sorted(want)
        assert any(h.log_text().count("cluster dataflow running") >= 2 for h in hubs if h is not hubs[victim]), \
            "the survivors' dataflow restarted with the returning process"
    finally:
        codes = stop_together(hubs)
    assert codes == [0] * processes, codes


def wait_for(check, timeout=15):
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.1)
    return check()


def take_c2d(dev, p):
    """Acknowledges the C2D publish `p` and returns its topic."""
    assert p is not None and p[0] == 3 and (p[1] >> 1) & 3 == 1, f"expected a QoS 1 C2D message, got {p}"
    n = struct.unpack(">H", p[2][:2])[0]
    topic = p[2][2:2 + n].decode()
    assert topic.startswith("devices/shared-1/messages/devicebound/"), topic
    dev.send(puback_packet(struct.unpack(">H", p[2][2 + n:4 + n])[0]))
    return topic


def test_registry_changes_on_one_process_reach_every_process(tmp_path):
    """A device registered, changed or deleted through any process's API is the same on
    every process (decision 039): it connects anywhere, a desired-properties change or a
    direct method or a C2D message through another process reaches its connection (a
    queued C2D message follows the device), connecting to another process ends the older
    connection, and disabling or deleting it anywhere closes its
    connection and refuses it everywhere. Feedback for a C2D message that moved is read on
    the process it was sent through."""
    hubs = start_cluster(tmp_path, 2, 1)
    try:
        key = register(hubs, "shared-1", on=0)
        r = hubs[1].call("GET", "/devices/shared-1").json()
        assert r["authentication"]["symmetricKey"]["primaryKey"] == key

        # A C2D message sent through process 0 while the device is offline waits there and
        # follows the device to process 1 when it connects.
        r = hubs[0].call("POST", "/devices/shared-1/messages/deviceBound", None,
                         headers={"iothub-messageid": "early", "iothub-ack": "full"})
        assert r.status_code == 204, r.text
        assert hubs[0].call("GET", "/devices/shared-1").json()["cloudToDeviceMessageCount"] == 1

        dev = Raw(hubs[1].mqtt_port, timeout=10)
        assert dev.connect("shared-1", hubs[1].username("shared-1"), hubs[1].device_token("shared-1", key)) == 0
        subs = ((1, "$iothub/twin/PATCH/properties/desired/#", 0), (2, "$iothub/twin/res/#", 0),
                (3, "$iothub/methods/POST/#", 0), (4, "devices/shared-1/messages/devicebound/#", 1))
        for pkid, topic, qos in subs:
            dev.send(subscribe_packet(pkid, topic, qos=qos))
        got = [dev.packet() for _ in range(len(subs) + 1)]
        assert [p[0] for p in got].count(9) == len(subs), got
        c2d = next(p for p in got if p[0] == 3)
        assert "%24.mid=early" in take_c2d(dev, c2d)
        assert wait_for(lambda: hubs[0].call("GET", "/devices/shared-1").json()["cloudToDeviceMessageCount"] == 0)
        # Completed on process 1, its feedback is read where it was sent: process 0.
        feedback = wait_for(lambda: (lambda r: r.status_code == 200 and r)(
            hubs[0].call("GET", "/messages/serviceBound/feedback")))
        assert feedback, "no feedback on process 0 for the message completed on process 1"
        assert [(f["originalMessageId"], f["statusCode"], f["deviceId"]) for f in feedback.json()] == \
            [("early", "Success", "shared-1")]
        token = feedback.headers["iothub-lockToken"]
        assert hubs[0].call("DELETE", f"/messages/serviceBound/feedback/{token}").status_code == 204
        assert hubs[1].call("GET", "/messages/serviceBound/feedback").status_code == 204

        r = hubs[0].call("PATCH", "/twins/shared-1", {"tags": {"site": "north"}, "properties": {"desired": {"fan": "on"}}})
        assert r.status_code == 200, r.text
        p = dev.packet()
        assert p is not None and p[0] == 3, f"expected the desired patch, got {p}"
        topic_len = struct.unpack(">H", p[2][:2])[0]
        topic = p[2][2:2 + topic_len].decode()
        assert topic.startswith("$iothub/twin/PATCH/properties/desired/"), topic
        patch = json.loads(p[2][2 + topic_len:])
        assert patch["fan"] == "on" and patch["$version"] == 2, patch
        assert wait_for(lambda: hubs[1].call("GET", "/twins/shared-1").json().get("tags") == {"site": "north"})

        # Reported properties the device sends to process 1 are read through process 0.
        dev.send(publish_packet("$iothub/twin/PATCH/properties/reported/?$rid=7", b'{"firmware": "2.1"}', qos=0))
        p = dev.packet()
        assert p is not None and p[0] == 3 and b"$iothub/twin/res/204/" in p[2], p
        assert wait_for(lambda: hubs[0].call("GET", "/twins/shared-1").json()["properties"]["reported"].get("firmware") == "2.1")

        # A direct method called through process 0 reaches the device on process 1, and its
        # answer comes back to the caller.
        call = {}
        caller = threading.Thread(target=lambda: call.update(r=hubs[0].call(
            "POST", "/twins/shared-1/methods", {"methodName": "reboot", "payload": {"in": 3},
                                                "responseTimeoutInSeconds": 10})))
        caller.start()
        p = dev.packet()
        assert p is not None and p[0] == 3, f"expected the method request, got {p}"
        topic_len = struct.unpack(">H", p[2][:2])[0]
        topic = p[2][2:2 + topic_len].decode()
        assert topic.startswith("$iothub/methods/POST/reboot/?$rid="), topic
        assert json.loads(p[2][2 + topic_len:]) == {"in": 3}
        rid = topic.split("$rid=")[1]
        dev.send(publish_packet(f"$iothub/methods/res/201/?$rid={rid}", b'{"rebooting": true}', qos=0))
        caller.join(timeout=15)
        assert call["r"].status_code == 200, call["r"].text
        assert call["r"].json() == {"status": 201, "payload": {"rebooting": True}}
        # A C2D message sent through process 0 reaches the device connected to process 1.
        r = hubs[0].call("POST", "/devices/shared-1/messages/deviceBound", None, headers={"iothub-messageid": "live"})
        assert r.status_code == 204, r.text
        assert "%24.mid=live" in take_c2d(dev, dev.packet())
        assert wait_for(lambda: hubs[1].call("GET", "/devices/shared-1").json()["cloudToDeviceMessageCount"] == 0)
        assert wait_for(lambda: hubs[0].call("GET", "/devices/shared-1").json()["cloudToDeviceMessageCount"] == 0), \
            "the sending process still holds a message the device's process took"
        # A device connected nowhere: "not online" at once, not after the timeout.
        register(hubs, "nowhere-1", on=1)
        t = time.time()
        r = hubs[0].call("POST", "/twins/nowhere-1/methods", {"methodName": "m", "responseTimeoutInSeconds": 20})
        assert r.status_code == 404 and time.time() - t < 5, (r.status_code, r.text, time.time() - t)
        assert hubs[1].metric("weir_devices_registered") == 2

        # The device connects to process 0 as well: its older connection to process 1 ends,
        # as a newer connection replaces an older one within a process.
        dev0 = Raw(hubs[0].mqtt_port, timeout=10)
        assert dev0.connect("shared-1", hubs[0].username("shared-1"), hubs[0].device_token("shared-1", key)) == 0
        assert dev.closed(timeout=15), "the older connection on process 1 stays open"
        dev.close()

        # Disabled through process 1: its connection to process 0 is closed.
        r = hubs[1].call("PUT", "/devices/shared-1", {"deviceId": "shared-1", "status": "disabled",
                                                      "authentication": {"type": "sas", "symmetricKey": {"primaryKey": key, "secondaryKey": key}}},
                         headers={"If-Match": "*"})
        assert r.status_code == 200, r.text
        assert dev0.closed(timeout=15), "the connection of a device disabled on another process stays open"
        dev0.close()
        # Counted once the connection has finished closing, which is after its socket is.
        revoked = lambda: hubs[0].metric("weir_connections_revoked_total", protocol="mqtt", reason="disabled")
        assert wait_for(lambda: revoked() >= 1), "the closed connection is not counted as revoked"
        assert revoked() == 1

        # Deleted through process 1: gone on process 0, and refused there.
        assert hubs[1].call("DELETE", "/devices/shared-1", headers={"If-Match": "*"}).status_code == 204
        assert wait_for(lambda: hubs[0].call("GET", "/devices/shared-1").status_code == 404)
        again = Raw(hubs[0].mqtt_port, timeout=10)
        assert again.connect("shared-1", hubs[0].username("shared-1"), hubs[0].device_token("shared-1", key)) != 0
        again.close()
    finally:
        codes = stop_together(hubs)
    assert codes == [0, 0], codes


def test_c2d_feedback_for_a_paho_device_on_another_process_is_read_where_it_was_sent(tmp_path):
    """The cluster's C2D path with a standard MQTT client (paho) as the device: a message
    with `iothub-ack: full` sent through process 0 reaches the device connected to process
    1, paho acknowledges it (the IoT Hub MQTT way to complete), and its `Success` feedback
    is read on process 0, not on process 1 (decision 039)."""
    hubs = start_cluster(tmp_path, 2, 1)
    client = None
    try:
        key = register(hubs, "paho-c2d", on=0)
        got, subscribed = [], threading.Event()
        client = paho.Client(client_id="paho-c2d", protocol=paho.MQTTv311, clean_session=False)
        client.username_pw_set(hubs[1].username("paho-c2d"), hubs[1].device_token("paho-c2d", key))
        client.on_connect = lambda c, u, f, rc: c.subscribe("devices/paho-c2d/messages/devicebound/#", qos=1)
        client.on_subscribe = lambda c, u, mid, granted: subscribed.set()
        client.on_message = lambda c, u, m: got.append((m.topic, m.payload, m.qos))
        client.connect("127.0.0.1", hubs[1].mqtt_port, 30)
        client.loop_start()
        assert subscribed.wait(10), "no SUBACK"

        r = hubs[0].call("POST", "/devices/paho-c2d/messages/deviceBound", b"open the valve",
                         headers={"iothub-messageid": "valve-1", "iothub-ack": "full"})
        assert r.status_code == 204, r.text
        assert wait_for(lambda: got, timeout=15), "the message sent through process 0 did not reach paho on process 1"
        topic, payload, qos = got[0]
        assert payload == b"open the valve" and qos == 1 and "%24.mid=valve-1" in topic, got

        feedback = wait_for(lambda: (lambda r: r.status_code == 200 and r)(
            hubs[0].call("GET", "/messages/serviceBound/feedback")), timeout=20)
        assert feedback, "no feedback on process 0 for the message paho completed on process 1"
        assert [(f["originalMessageId"], f["statusCode"], f["deviceId"]) for f in feedback.json()] == \
            [("valve-1", "Success", "paho-c2d")]
        assert hubs[1].call("GET", "/messages/serviceBound/feedback").status_code == 204
        assert hubs[0].call("GET", "/devices/paho-c2d").json()["cloudToDeviceMessageCount"] == 0
    finally:
        if client:
            client.loop_stop()
            client.disconnect()
        codes = stop_together(hubs)
    assert codes == [0, 0], codes


def test_a_ca_verified_through_one_process_admits_its_devices_on_every_process(tmp_path):
    """CA certificates are part of the cluster's registry (decision 039): a CA added and
    verified through process 0 admits its devices on process 1; deleting it through
    process 0 closes their connections on process 1 and refuses them there."""
    hubs = start_cluster(tmp_path, 2, 1)
    client = None
    try:
        root = certs.ca("Cluster Root")
        r = hubs[0].call("PUT", "/certificates/root",
                         {"properties": {"certificate": base64.b64encode(root.der).decode()}})
        assert r.status_code == 200, r.text
        etag = r.json()["etag"]
        r = hubs[0].call("POST", "/certificates/root/generateVerificationCode", headers={"If-Match": f'"{etag}"'})
        assert r.status_code == 200, r.text
        code, etag = r.json()["properties"]["verificationCode"], r.json()["etag"]
        r = hubs[0].call("POST", "/certificates/root/verify", {"certificate": certs.device(code, issuer=root).pem},
                         headers={"If-Match": f'"{etag}"'})
        assert r.status_code == 200 and r.json()["properties"]["isVerified"] is True, r.text

        def verified_on_1():
            r = hubs[1].call("GET", "/certificates/root")
            return r.status_code == 200 and r.json()["properties"]["isVerified"] is True
        assert wait_for(verified_on_1), "the CA verified on process 0 did not reach process 1"

        r = hubs[0].call("PUT", "/devices/ca-dev", {"deviceId": "ca-dev", "authentication": {"type": "certificateAuthority"}})
        assert r.status_code == 200, r.text
        etag = r.json()["etag"]
        assert wait_for(lambda: hubs[1].call("GET", "/devices/ca-dev").json().get("etag") == etag)
        files = certs.device("ca-dev", issuer=root).write(tmp_path, "ca-dev")

        # Connected to process 1 with the CA-signed certificate, and held.
        acks, gone = [], []
        client = paho.Client(client_id="ca-dev", protocol=paho.MQTTv311, clean_session=True)
        client.username_pw_set(f"{hubs[1].hostname}/ca-dev/?api-version=2019-10-01")
        client.tls_set(ca_certs=hubs[1].ca, certfile=files[0], keyfile=files[1], tls_version=ssl.PROTOCOL_TLSv1_2)
        client.on_connect = lambda c, u, f, rc: acks.append(rc)
        client.on_disconnect = lambda c, u, rc: gone.append(rc)
        client.reconnect_delay_set(60, 60)
        client.connect("127.0.0.1", hubs[1].mqtts_port, 30)
        client.loop_start()
        assert wait_for(lambda: acks), "no CONNACK from process 1"
        assert acks == [0], f"process 1 refused a device of the CA verified on process 0: {acks}"

        # Deleted through process 0: the connection on process 1 goes, and it is refused there.
        assert hubs[0].call("DELETE", "/certificates/root", headers={"If-Match": "*"}).status_code == 204
        assert wait_for(lambda: gone), "the device of a CA deleted on process 0 is still connected to process 1"
        assert wait_for(lambda: hubs[1].metric("weir_connections_revoked_total", protocol="mqtt") >= 1)
        client.loop_stop()
        client = None
        assert wait_for(lambda: hubs[1].call("GET", "/certificates/root").status_code == 404)
        assert paho_connack(hubs[1], "ca-dev", files) == 5
    finally:
        if client is not None:
            client.loop_stop()
        codes = stop_together(hubs)
    assert codes == [0, 0], codes


def test_a_process_stopped_alone_holds_the_clusters_frontier_until_it_returns(tmp_path):
    """Stopping one process while the others run (decision 037): from the moment it
    stops, nothing more is archived anywhere (its sources hold the cluster's frontier, so
    no commit passes offsets it may still write after its return); the others keep
    acknowledging; it exits by itself, and once it is back every message is archived
    exactly once."""
    hubs = start_cluster(tmp_path, 2, 1)
    try:
        key = register(hubs, "stop-1", on=0)
        dev = Raw(hubs[0].mqtt_port, timeout=10)
        assert dev.connect("stop-1", hubs[0].username("stop-1"), hubs[0].device_token("stop-1", key)) == 0

        def send(k):
            body = json.dumps({"k": k, "temp": 20, "ts": int(time.time() * 1000)}).encode()
            assert dev.publish("devices/stop-1/messages/events/", body, k % 60000 + 1) == k % 60000 + 1

        def rows():
            return sql(hubs, "SELECT count(*) FROM raw WHERE device_id = 'stop-1'")[0][0]

        for k in range(5):
            send(k)
        assert wait_for(lambda: rows() == 5), rows()
        hubs[1].signal_hub(signal.SIGTERM)
        for k in range(5, 10):
            send(k)
        time.sleep(2)
        assert rows() == 5, "archived while a process of the cluster was stopping"
        assert hubs[1].proc.wait(timeout=30) == 0
        assert "other processes of the cluster run" in hubs[1].log_text()
        hubs[1].start()
        assert wait_for(lambda: rows() >= 10, timeout=60), rows()
        got = sql(hubs, "SELECT json_extract_string(body, '$.k'), count(*) FROM raw WHERE device_id = 'stop-1' GROUP BY 1")
        assert sorted(int(k) for k, n in got if n == 1) == list(range(10)), got
        dev.close()
    finally:
        codes = stop_together(hubs)
    assert codes == [0, 0], codes


def test_a_process_with_another_worker_count_is_refused_and_the_cluster_goes_on(tmp_path):
    """Processes compare their shape when they join (decision 037): one started with
    another `--workers` stops with an error naming the setting instead of breaking
    timely's exchange; the process that had run with the cluster says so, keeps accepting,
    and rejoins once the process is started as before. Each live page then shows the
    other process as it reports itself."""
    hubs = start_cluster(tmp_path, 2, 2)
    try:
        key = register(hubs, "shape-1", on=0)
        hubs[1].proc.send_signal(signal.SIGKILL)
        hubs[1].proc.wait(timeout=10)
        odd_dir = tmp_path / "p1-one-worker"
        odd_dir.mkdir()
        odd = Hub(odd_dir, hubs[1].rules, workers=1, extra_args=hubs[1].extra_args)
        try:
            odd.start()
        except RuntimeError:
            pass  # it may already have found the mismatch and stopped
        code = odd.proc.wait(timeout=60)
        odd.log.close()
        log = odd.log_text()
        assert code == 1, log[-3000:]
        assert "cannot join its cluster" in log and "engine.workers" in log, log[-3000:]
        assert "process 0" in log and "runs 2 worker(s), this process runs 1" in log, log[-3000:]

        assert hubs[0].proc.poll() is None, "the process that had run stopped"
        assert hubs[0].wait_log("runs 1 worker(s), this process runs 2", timeout=30), hubs[0].log_text()[-3000:]
        dev = Raw(hubs[0].mqtt_port, timeout=10)
        assert dev.connect("shape-1", hubs[0].username("shape-1"), hubs[0].device_token("shape-1", key)) == 0
        body = json.dumps({"temp": 1, "ts": int(time.time() * 1000)}).encode()
        assert dev.publish("devices/shape-1/messages/events/", body, 1) == 1, "not accepted while the cluster is down"

        runs = hubs[0].log_text().count("cluster dataflow running")
        hubs[1].start()
        assert wait_for(lambda: hubs[0].log_text().count("cluster dataflow running") > runs, timeout=90), \
            hubs[0].log_text()[-3000:]
        assert wait_for(lambda: sql(hubs, "SELECT count(*) FROM raw WHERE device_id = 'shape-1'")[0][0] == 1,
                        timeout=60)

        # Process 1's live page shows process 0 as process 0 reports itself.
        def heard():
            r = hubs[1].call("GET", "/dashboard/snapshot")
            assert r.status_code == 200, r.text
            p0 = r.json()["cluster"]["processes"][0]
            return p0 if p0["report"] and p0["report"]["messagesIn"] >= 1 else None
        p0 = wait_for(heard, timeout=30)
        assert p0, hubs[1].call("GET", "/dashboard/snapshot").json()["cluster"]
        assert p0["report"]["devicesConnected"] == 1 and p0["heardMsAgo"] < 5000, p0
        # Seconds of log in a cluster (its offsets follow a clock), not a huge offset count;
        # unknown until every partition has committed once.
        secs = p0["report"]["backlogSecs"]
        assert p0["report"]["backlog"] is None and (secs is None or 0 <= secs < 60), p0
        # The row is archived by its partition's owner, on either process: the table shows both.
        procs = hubs[1].call("GET", "/dashboard/snapshot").json()["cluster"]["processes"]
        assert sum(p["report"]["archivedRows"] for p in procs) >= 1, procs
        dev.close()
    finally:
        codes = stop_together(hubs)
    assert codes == [0, 0], codes


def stop_together(hubs):
    """A cluster stops when every process is told to: each one's dataflow ends once every
    process's log has closed."""
    for h in hubs:
        if h.proc and h.proc.poll() is None:
            h.signal_hub(signal.SIGTERM)
    codes = []
    for h in hubs:
        try:
            codes.append(h.proc.wait(timeout=60))
        finally:
            h.log.close()
    return codes


def ws_text(ms):
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000)) + ".000Z"
