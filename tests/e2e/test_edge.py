"""Edge mode: a hub and an edge (`[upstream]`) on loopback, the edge's link to the hub through
a TCP proxy that the test black-holes, closes and restores while child devices keep
publishing to the edge. Every message the edge acknowledged to a child lands in the hub's
archive exactly once, under the child's id and in the child's order, with the edge named
in the `weir-edge` system property; the hub only lets an edge publish for its own
children."""

import json
import time

import pytest

from edgehub import EDGE_RULES, HUB_RULES, Child, Proxy, make_hub, put_device, shut_down, start_edge, wait_for
from rawmqtt import Raw, publish_packet
from weirhub import free_port

def test_children_reach_the_hub_exactly_once_in_order_across_outages(tmp_path):
    hub = make_hub(tmp_path, "hub", HUB_RULES, hostname="hub.test").start()
    edge = None
    proxy = Proxy(hub.mqtts_port)
    try:
        e = put_device(hub, "edge1", {"capabilities": {"iotEdge": True}})
        assert e["capabilities"]["iotEdge"] is True
        assert e["deviceScope"] == "ms-azure-iot-edge://edge1"
        children = {}
        for name in ("c1", "c2", "c3"):
            c = put_device(hub, name, {"parentScopes": [e["deviceScope"]]})
            assert c["parentScopes"] == ["ms-azure-iot-edge://edge1"]
            children[name] = c["authentication"]["symmetricKey"]["primaryKey"]
        # Only an existing IoT Edge device can be a parent.
        r = hub.call("PUT", "/devices/orphan", {"parentScopes": ["ms-azure-iot-edge://c1"]})
        assert r.status_code == 400 and "IoT Edge" in r.text, r.text

        # The edge gets its children's identities from the hub.
        edge = start_edge(tmp_path, hub, e, EDGE_RULES, port=proxy.port, children=children)
        assert edge.wait_log("connected to the hub", timeout=20)

        devices = [Child(edge, name, key) for name, key in children.items()]
        for d in devices:
            d.thread.start()
        connected = lambda: edge.log_text().count("connected to the hub")  # noqa: E731

        def reconnected(before, timeout=40):
            deadline = time.time() + timeout
            while connected() <= before:
                assert time.time() < deadline, "the edge did not reconnect\n" + edge.log_text()[-3000:]
                time.sleep(0.2)

        time.sleep(2)
        # The hub gets what the edge sends but the edge hears nothing: it gives the link
        # up (after 10 s of silence) and sends again what the hub already has.
        before = connected()
        proxy.set("acks-lost")
        assert edge.wait_log("the hub acknowledged nothing", timeout=30)
        proxy.set("pass")
        reconnected(before)
        time.sleep(2)
        # Black-holed, then closed, then restored.
        before = connected()
        proxy.set("blackhole")
        time.sleep(12)
        proxy.set("closed")
        time.sleep(4)
        proxy.set("pass")
        reconnected(before)
        time.sleep(2)
        for d in devices:
            d.finish()
            assert not d.errors, d.errors
        total = sum(len(d.acked) for d in devices)
        assert all(len(d.acked) > 500 for d in devices), [len(d.acked) for d in devices]

        hub.wait_rows("archive", total, timeout=120)
        time.sleep(1.5)
        for d in devices:
            rows = hub.query("archive", f"""
                SELECT CAST(json_extract(body, '$.i') AS BIGINT), system['weir-edge'], message_id
                FROM t WHERE device_id = '{d.name}' ORDER BY ingest_offset """)
            seq = [r[0] for r in rows]
            # Exactly once and in the child's order: the hub's log order is the child's.
            assert seq == d.acked, (d.name, len(seq), len(d.acked),
                                    [x for x in d.acked if x not in set(seq)][:10])
            assert {r[1] for r in rows} == {"edge1"}
            assert rows[0][2] == f"{d.name}-0"
        # Also at the edge, where the local archive kept everything as well.
        edge.wait_rows("local", total, timeout=30)
        assert edge.log_text().count("connected to the hub") >= 3
        # What the edge sent again after the lost acknowledgements was recognised.
        assert hub.metric("weir_engine_duplicates_total") > 0
    finally:
        proxy.close()
        shut_down([], edge, hub)


def test_the_hub_admits_an_edge_only_for_its_own_children(tmp_path):
    hub = make_hub(tmp_path, "hub", HUB_RULES).start()
    try:
        e = put_device(hub, "edge1", {"capabilities": {"iotEdge": True}})
        put_device(hub, "edge2", {"capabilities": {"iotEdge": True}})
        put_device(hub, "mine", {"parentScopes": [e["deviceScope"]]})
        put_device(hub, "theirs", {"parentScopes": ["ms-azure-iot-edge://edge2"]})
        key = e["authentication"]["symmetricKey"]["primaryKey"]

        def connect():
            r = Raw(hub.mqtt_port, timeout=10)
            assert r.connect("edge1", hub.username("edge1"), hub.device_token("edge1", key)) == 0
            return r

        r = connect()
        assert r.publish("devices/mine/messages/events/%24.mid=x1", b'{"n":1}', pkid=1) == 1
        r.close()
        for foreign in ("theirs", "edge2", "nobody"):
            r = connect()
            r.send(publish_packet(f"devices/{foreign}/messages/events/", b"{}", qos=1, pkid=2))
            assert r.closed(), foreign
        mine = hub.call("GET", "/devices/mine").json()
        assert mine["parentScopes"] == ["ms-azure-iot-edge://edge1"]
        hub.wait_rows("archive", 1)
        rows = hub.query("archive", "SELECT device_id, system['weir-edge'] FROM t")
        assert rows == [("mine", "edge1")]
    finally:
        hub.stop()


DECIDE_RULES = """
[[endpoint]]
name = "hub"
type = "upstream"

[[endpoint]]
name = "stop"
type = "method"
method = "shutdown"
payload = { reason = "overheat", temp = "{body.temp}", by = "{route}" }
timeout_secs = 5

[[route]]
name = "forward"
condition = "true"
endpoints = ["hub"]

[[route]]
name = "too-hot"
condition = "$body.temp > 80"
endpoints = ["stop"]
"""


def read_publish(raw):
    """The next PUBLISH (topic, payload) on `raw`, skipping other packets."""
    while True:
        p = raw.packet()
        assert p is not None, "the connection closed"
        kind, flags, body = p
        if kind != 3:
            continue
        n = int.from_bytes(body[:2], "big")
        topic = body[2:2 + n].decode()
        rest = body[2 + n:]
        if (flags >> 1) & 3:
            rest = rest[2:]
        return topic, rest


def test_a_local_rule_stops_a_machine_within_50_ms_while_the_hub_is_unreachable(tmp_path):
    # The hub is nowhere: port 9 on loopback refuses connections.
    config = """
[upstream]
hub = "hub.test"
device_id = "edge1"
key = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
address = "127.0.0.1:9"
"""
    edge = make_hub(tmp_path, "edge", DECIDE_RULES, config=config).start()
    try:
        assert edge.wait_log("the link to the hub is down", timeout=10)
        key = edge.create_device("press")["authentication"]["symmetricKey"]["primaryKey"]
        raw = Raw(edge.mqtt_port, timeout=10)
        assert raw.connect("press", edge.username("press"), edge.device_token("press", key)) == 0
        from rawmqtt import subscribe_packet
        raw.send(subscribe_packet(1, "$iothub/methods/POST/#"))
        assert raw.packet()[0] == 9  # SUBACK
        latencies = []
        for i in range(30):
            temp = 81 + i
            start = time.perf_counter()
            raw.send(publish_packet("devices/press/messages/events/", json.dumps({"temp": temp}).encode(),
                                    qos=1, pkid=i + 1))
            topic, payload = read_publish(raw)
            latencies.append((time.perf_counter() - start) * 1000)
            assert topic.startswith("$iothub/methods/POST/shutdown/?$rid="), topic
            assert json.loads(payload) == {"reason": "overheat", "temp": temp, "by": "too-hot"}
            rid = topic.rsplit("=", 1)[1]
            raw.send(publish_packet(f"$iothub/methods/res/200/?$rid={rid}", b'{"stopped": true}', qos=0))
            time.sleep(0.05)
        # Cool messages trigger nothing.
        raw.send(publish_packet("devices/press/messages/events/", b'{"temp": 20}', qos=1, pkid=99))
        raw.sock.settimeout(1)
        try:
            extra = read_publish(raw)
        except OSError:
            extra = None
        assert extra is None, extra
        latencies.sort()
        print("method latency ms: median %.1f p90 %.1f max %.1f" % (
            latencies[len(latencies) // 2], latencies[int(len(latencies) * 0.9)], latencies[-1]))
        assert latencies[int(len(latencies) * 0.9)] < 50, latencies
        assert edge.wait_log("direct method answered", timeout=5)
        # The upstream queue keeps everything for when the hub is back.
        up = edge.call("GET", "/upstream").json()
        assert up["connected"] is False and up["backlogMessages"] == 31, up
        from conftest import run_weir
        r = run_weir("edge", "status", "--api", edge.api, "--data-dir", edge.data)
        assert r.returncode == 0, r.stderr
        assert "31 messages" in r.stdout and "down (" in r.stdout, r.stdout
    finally:
        edge.stop()


def test_children_are_kept_at_the_edge_authenticate_offline_and_get_desired_patches(tmp_path):
    from mqttclients import Device

    hub = make_hub(tmp_path, "hub", HUB_RULES, hostname="hub.test").start()
    edge = None
    clients = []
    try:
        e = put_device(hub, "edge1", {"capabilities": {"iotEdge": True}})
        keys = {}
        for name in ("k1", "k2", "k3"):
            doc = put_device(hub, name, {"parentScopes": [e["deviceScope"]]})
            keys[name] = doc["authentication"]["symmetricKey"]["primaryKey"]
        put_device(hub, "stranger", {})
        edge = start_edge(tmp_path, hub, e, EDGE_RULES, settings="sync_secs = 1", children=keys)
        assert edge.call("GET", "/devices/stranger").status_code == 404
        local = edge.call("GET", "/devices/k1").json()
        assert local["authentication"]["symmetricKey"]["primaryKey"] == keys["k1"]
        assert local["parentScopes"] == ["ms-azure-iot-edge://edge1"]

        # A desired patch made on the hub reaches the child through the edge.
        patches = []
        k1 = Device(edge, "k1", edge.device_token("k1", keys["k1"]), tls=False, clean_session=True)
        clients.append(k1)

        def on_message(c, u, m):
            if m.topic.startswith("$iothub/methods/POST/"):
                rid = m.topic.split("$rid=")[1]
                answer = {"method": m.topic.split("/")[3], "echo": json.loads(m.payload)}
                c.publish(f"$iothub/methods/res/200/?$rid={rid}", json.dumps(answer), qos=0)
            else:
                patches.append((m.topic, json.loads(m.payload)))

        k1.client.on_message = on_message
        assert k1.connect() == 0
        k1.client.subscribe("$iothub/twin/PATCH/properties/desired/#", qos=0)
        k1.client.subscribe("$iothub/methods/POST/#", qos=0)
        time.sleep(0.5)
        r = hub.call("PATCH", "/twins/k1", {"properties": {"desired": {"speed": 5}}})
        assert r.status_code == 200, r.text
        wait_for(lambda: any(p.get("speed") == 5 for _, p in patches), f"no desired patch at the child: {patches}")
        assert patches[-1][0].startswith("$iothub/twin/PATCH/properties/desired/")
        # ...and the edge keeps it for the child's twin reads.
        twin = edge.call("GET", "/twins/k1").json()
        assert twin["properties"]["desired"]["speed"] == 5

        # A direct method invoked on the hub runs on the child through the edge.
        r = hub.call("POST", "/twins/k1/methods",
                     {"methodName": "reboot", "payload": {"delay": 3}, "responseTimeoutInSeconds": 10})
        assert r.status_code == 200, r.text
        assert r.json() == {"status": 200, "payload": {"method": "reboot", "echo": {"delay": 3}}}
        # A child that is connected nowhere: the edge answers for it that it is not online.
        r = hub.call("POST", "/twins/k2/methods", {"methodName": "reboot", "responseTimeoutInSeconds": 5})
        assert r.status_code == 200 and r.json()["status"] == 404, r.text

        # The hub goes away: children still authenticate at the edge, wrong keys do not.
        hub.stop()
        k2 = Device(edge, "k2", edge.device_token("k2", keys["k2"]), tls=False, clean_session=True)
        clients.append(k2)
        assert k2.connect() == 0
        assert k2.publish(k2.telemetry_topic("%24.mid=offline-1"), b'{"offline": true}')
        wrong = Device(edge, "k3", edge.device_token("k3", keys["k1"]), tls=False, clean_session=True)
        clients.append(wrong)
        assert wrong.connect() == 5  # not authorized
        hub.start()
        hub.wait_rows("archive", 1, timeout=60)
        rows = hub.query("archive", "SELECT device_id, message_id, system['weir-edge'] FROM t")
        assert rows == [("k2", "offline-1", "edge1")], rows

        # A child deleted on the hub is deleted at the edge: it can no longer connect there.
        assert hub.call("DELETE", "/devices/k3").status_code == 204
        wait_for(lambda: edge.call("GET", "/devices/k3").status_code == 404, "k3 is still at the edge")
    finally:
        shut_down(clients, edge, hub)


def test_a_plain_mqtt_client_reaches_the_hub_as_its_device_through_translation(tmp_path):
    import subprocess

    hub = make_hub(tmp_path, "hub", HUB_RULES, hostname="hub.test").start()
    edge = None
    try:
        e = put_device(hub, "edge1", {"capabilities": {"iotEdge": True}})
        put_device(hub, "dev7", {"parentScopes": [e["deviceScope"]]})
        translate = '[[translate]]\nname = "plant"\ntopic = "plant/{deviceId}/telemetry"\nauth = "password"\npassword = "plant-secret"\n'
        edge = start_edge(tmp_path, hub, e, EDGE_RULES, tail=translate, children=["dev7"])

        def pub(password, topic="plant/dev7/telemetry", body='{"t": 21}'):
            return subprocess.run(
                ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(edge.mqtt_port), "-i", "legacy-7",
                 "-u", "dev7", "-P", password, "-t", topic, "-m", body, "-q", "1"],
                capture_output=True, text=True, timeout=20)

        ok = pub("plant-secret")
        assert ok.returncode == 0, ok.stderr
        refused = pub("wrong", body='{"t": 99}')
        assert refused.returncode != 0 and "not authorised" in refused.stderr.lower(), refused.stderr
        hub.wait_rows("archive", 1, timeout=30)
        time.sleep(1)
        rows = hub.query("archive", "SELECT device_id, body, system['weir-edge'] FROM t")
        assert rows == [("dev7", '{"t": 21}', "edge1")], rows
        local = edge.query("local", "SELECT device_id FROM t")
        assert local == [("dev7",)]
    finally:
        shut_down([], edge, hub)


BUDGET_RULES = """
[[endpoint]]
name = "hub"
type = "upstream"

[[endpoint]]
name = "drops"
type = "parquet"

[[route]]
name = "low"
priority = 1
condition = "$body.kind = 'low'"
endpoints = ["hub"]

[[route]]
name = "high"
priority = 8
condition = "$body.kind = 'high'"
endpoints = ["hub"]

[[route]]
name = "ledger"
source = "EdgeDrops"
priority = 9
endpoints = ["hub", "drops"]
"""


def test_a_full_budget_drops_only_the_oldest_low_priority_messages_and_says_so(tmp_path):
    hub = make_hub(tmp_path, "hub", HUB_RULES, hostname="hub.test").start()
    edge = None
    proxy = Proxy(hub.mqtts_port)
    try:
        e = put_device(hub, "edge1", {"capabilities": {"iotEdge": True}})
        keys = {n: put_device(hub, n, {"parentScopes": [e["deviceScope"]]})["authentication"]["symmetricKey"]["primaryKey"]
                for n in ("d1", "d2")}
        edge = start_edge(tmp_path, hub, e, BUDGET_RULES, port=proxy.port, settings="budget_mb = 0.2", children=keys)
        proxy.set("closed")
        clients = {}
        for n, k in keys.items():
            clients[n] = Raw(edge.mqtt_port, timeout=10)
            assert clients[n].connect(n, edge.username(n), edge.device_token(n, k)) == 0
        sent = {(n, kind): [] for n in keys for kind in ("high", "low")}
        pad = "x" * 300
        for i in range(300):
            for n, r in clients.items():
                kind = "high" if i % 2 == 0 else "low"
                body = json.dumps({"kind": kind, "i": i, "pad": pad}).encode()
                assert r.publish(f"devices/{n}/messages/events/%24.mid={n}-{i}", body, pkid=i + 1) == i + 1
                sent[(n, kind)].append(i)
        up = edge.call("GET", "/upstream").json()
        assert up["dropped"] > 0 and up["backlogBytes"] <= up["budgetBytes"], up
        proxy.set("pass")
        wait_for(lambda: edge.call("GET", "/upstream").json()["backlogMessages"] == 0,
                 "the edge did not catch up", timeout=90)
        time.sleep(1.5)
        got = hub.query("archive", """
            SELECT device_id, json_extract_string(body, '$.kind'), CAST(json_extract(body, '$.i') AS BIGINT)
            FROM t WHERE properties['weir-source'] IS NULL ORDER BY ingest_offset""")
        ledger = hub.query("archive", """
            SELECT json_extract_string(body, '$.route'), json_extract_string(body, '$.device'),
                   CAST(json_extract(body, '$.count') AS BIGINT), properties['weir-device']
            FROM t WHERE properties['weir-source'] = 'EdgeDrops'""")
        assert ledger, "no ledger reached the hub"
        missing = 0
        for n in keys:
            high = [i for d, k, i in got if d == n and k == "high"]
            low = [i for d, k, i in got if d == n and k == "low"]
            # Every high-priority message, once, in order.
            assert high == sent[(n, "high")], (n, len(high))
            # The low-priority ones that are missing are the oldest: the rest is a suffix.
            assert low == sent[(n, "low")][len(sent[(n, "low")]) - len(low):], (n, low[:5])
            dropped = len(sent[(n, "low")]) - len(low)
            counted = sum(c for route, dev, c, _ in ledger if route == "low" and dev == n)
            assert dropped == counted, (n, dropped, counted, ledger)
            missing += dropped
        assert missing == edge.call("GET", "/upstream").json()["dropped"] > 0
        assert all(route == "low" and wd == dev for route, dev, _, wd in ledger), ledger
        # The edge keeps the same ledger as a Parquet table.
        local = edge.query("drops", "SELECT sum(CAST(json_extract(body, '$.count') AS BIGINT)) FROM t")
        assert local[0][0] == missing
    finally:
        proxy.close()
        shut_down([], edge, hub)


@pytest.mark.parametrize("transport,protocol", [("quic", "mqtt-quic"), ("websocket", "mqtt-ws")])
def test_the_upstream_link_runs_over_quic_and_websocket(tmp_path, transport, protocol):
    hub = make_hub(tmp_path, "hub", HUB_RULES, hostname="hub.test", fixed_ports={"https": free_port()}).start()
    edge = None
    try:
        e = put_device(hub, "edge1", {"capabilities": {"iotEdge": True}})
        key = put_device(hub, "q1", {"parentScopes": [e["deviceScope"]]})["authentication"]["symmetricKey"]["primaryKey"]
        port = hub.quic_port if transport == "quic" else hub.https_port
        edge = start_edge(tmp_path, hub, e, EDGE_RULES, port=port, settings=f'transport = "{transport}"', children=["q1"])
        r = Raw(edge.mqtt_port, timeout=10)
        assert r.connect("q1", edge.username("q1"), edge.device_token("q1", key)) == 0
        for i in range(50):
            assert r.publish(f"devices/q1/messages/events/%24.mid=q-{i}", json.dumps({"i": i}).encode(), pkid=i + 1) == i + 1
        # A device registered only at the edge is no child the hub knows: its message goes
        # up as the edge's own, naming it, instead of being refused there.
        lkey = edge.create_device("local1")["authentication"]["symmetricKey"]["primaryKey"]
        lr = Raw(edge.mqtt_port, timeout=10)
        assert lr.connect("local1", edge.username("local1"), edge.device_token("local1", lkey)) == 0
        assert lr.publish("devices/local1/messages/events/", b'{"local": 1}', pkid=1) == 1
        hub.wait_rows("archive", 51, timeout=30)
        rows = hub.query("archive", "SELECT CAST(json_extract(body, '$.i') AS BIGINT) FROM t WHERE device_id = 'q1' ORDER BY ingest_offset")
        assert [x[0] for x in rows] == list(range(50))
        own = hub.query("archive", "SELECT device_id, properties['weir-device'], body FROM t WHERE device_id = 'edge1'")
        assert own == [("edge1", "local1", '{"local": 1}')], own
        assert hub.metric("weir_gateway_messages_total", protocol=protocol) >= 50
        assert hub.metric("weir_gateway_messages_total", protocol="mqtt") == 0
    finally:
        shut_down([], edge, hub)


def test_an_edge_killed_mid_stream_loses_nothing_it_acknowledged(tmp_path):
    import signal

    hub = make_hub(tmp_path, "hub", HUB_RULES, hostname="hub.test").start()
    edge = None
    try:
        e = put_device(hub, "edge1", {"capabilities": {"iotEdge": True}})
        keys = {n: put_device(hub, n, {"parentScopes": [e["deviceScope"]]})["authentication"]["symmetricKey"]["primaryKey"]
                for n in ("x1", "x2")}
        edge = start_edge(tmp_path, hub, e, EDGE_RULES, children=keys)
        devices = [Child(edge, n, k) for n, k in keys.items()]
        for d in devices:
            d.thread.start()
        time.sleep(3)
        edge.stop(sig=signal.SIGKILL)
        for d in devices:
            d.thread.join(10)
        assert all(len(d.acked) > 100 for d in devices), [len(d.acked) for d in devices]
        edge.start()
        wait_for(lambda: edge.call("GET", "/upstream").json()["backlogMessages"] == 0
                 and edge.call("GET", "/upstream").json()["connected"], "the edge did not catch up", timeout=60)
        time.sleep(2)
        for d in devices:
            rows = hub.query("archive", f"""
                SELECT CAST(json_extract(body, '$.i') AS BIGINT) FROM t
                WHERE device_id = '{d.name}' ORDER BY ingest_offset""")
            seq = [r[0] for r in rows]
            # Everything acknowledged, once, in order; at most the one message in flight at
            # the kill besides (it may have been logged without its PUBACK going out).
            assert seq[:len(d.acked)] == d.acked, (d.name, len(seq), len(d.acked))
            assert seq[len(d.acked):] in ([], [len(d.acked)]), seq[len(d.acked):]
    finally:
        shut_down([], edge, hub)


def test_the_edge_can_prove_its_identity_with_a_certificate(tmp_path):
    import certs

    hub = make_hub(tmp_path, "hub", HUB_RULES, hostname="hub.test").start()
    edge = None
    try:
        cert = certs.device("edge-x509")
        cert_path, key_path = cert.write(tmp_path, "edge-x509")
        e = put_device(hub, "edge-x509", {
            "capabilities": {"iotEdge": True},
            "authentication": {"type": "selfSigned", "x509Thumbprint": {"primaryThumbprint": cert.thumbprint()}},
        })
        key = put_device(hub, "cx", {"parentScopes": [e["deviceScope"]]})["authentication"]["symmetricKey"]["primaryKey"]
        for transport, port in (("mqtts", hub.mqtts_port), ("quic", hub.quic_port)):
            settings = f'cert = "{cert_path}"\ncert_key = "{key_path}"\ntransport = "{transport}"'
            edge = start_edge(tmp_path, hub, e, EDGE_RULES, port=port, settings=settings,
                              name=f"edge-{transport}", children=["cx"])
            r = Raw(edge.mqtt_port, timeout=10)
            assert r.connect("cx", edge.username("cx"), edge.device_token("cx", key)) == 0
            assert r.publish(f"devices/cx/messages/events/%24.mid={transport}", b'{"x": 1}', pkid=1) == 1
            wait_for(lambda: len(hub.query("archive", f"SELECT 1 FROM t WHERE message_id = '{transport}'")) == 1,
                     f"nothing arrived over {transport}", timeout=30)
            edge.stop()
            edge = None
        rows = hub.query("archive", "SELECT device_id, system['weir-edge'] FROM t ORDER BY ingest_offset")
        assert rows == [("cx", "edge-x509"), ("cx", "edge-x509")], rows
    finally:
        shut_down([], edge, hub)


def test_translated_clients_may_log_in_with_their_device_key(tmp_path):
    import subprocess

    hub = make_hub(tmp_path, "hub", HUB_RULES, hostname="hub.test").start()
    edge = None
    try:
        e = put_device(hub, "edge1", {"capabilities": {"iotEdge": True}})
        key = put_device(hub, "dev8", {"parentScopes": [e["deviceScope"]]})["authentication"]["symmetricKey"]["primaryKey"]
        translate = '[[translate]]\nname = "legacy"\ntopic = "legacy/+/{deviceId}"\nauth = "device-key"\n'
        edge = start_edge(tmp_path, hub, e, EDGE_RULES, tail=translate, children=["dev8"])

        def pub(password, topic):
            return subprocess.run(
                ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(edge.mqtt_port), "-i", "old-8",
                 "-u", "dev8", "-P", password, "-t", topic, "-m", '{"t": 8}', "-q", "1"],
                capture_output=True, text=True, timeout=20)

        ok = pub(key, "legacy/line2/dev8")
        assert ok.returncode == 0, ok.stderr
        assert pub("bm90LXRoZS1rZXk=", "legacy/line2/dev8").returncode != 0
        hub.wait_rows("archive", 1, timeout=30)
        rows = hub.query("archive", "SELECT device_id, body FROM t")
        assert rows == [("dev8", '{"t": 8}')], rows
    finally:
        shut_down([], edge, hub)


C2D_RULES = """
[[endpoint]]
name = "notify"
type = "c2d"
target = "{app.to}"
payload = { alarm = "{body.temp}", from = "{deviceId}" }

[[route]]
name = "alarm"
condition = "$body.temp > 80"
endpoints = ["notify"]
"""


def test_a_rule_queues_a_cloud_to_device_message_for_another_device(tmp_path):
    from rawmqtt import subscribe_packet

    hub = make_hub(tmp_path, "hub", C2D_RULES).start()
    try:
        skey = hub.create_device("sensor")["authentication"]["symmetricKey"]["primaryKey"]
        ckey = hub.create_device("controller")["authentication"]["symmetricKey"]["primaryKey"]
        controller = Raw(hub.mqtt_port, timeout=10)
        assert controller.connect("controller", hub.username("controller"), hub.device_token("controller", ckey)) == 0
        controller.send(subscribe_packet(1, "devices/controller/messages/devicebound/#"))
        assert controller.packet()[0] == 9
        sensor = Raw(hub.mqtt_port, timeout=10)
        assert sensor.connect("sensor", hub.username("sensor"), hub.device_token("sensor", skey)) == 0
        assert sensor.publish("devices/sensor/messages/events/to=controller", b'{"temp": 20}', pkid=1) == 1
        assert sensor.publish("devices/sensor/messages/events/to=controller", b'{"temp": 91}', pkid=2) == 2
        topic, payload = read_publish(controller)
        assert topic.startswith("devices/controller/messages/devicebound/"), topic
        assert "weir-route=alarm" in topic, topic
        assert json.loads(payload) == {"alarm": 91, "from": "sensor"}
        # Only the hot message made one.
        controller.sock.settimeout(1)
        try:
            extra = read_publish(controller)
        except OSError:
            extra = None
        assert extra is None, extra
    finally:
        hub.stop()


def test_weir_device_create_registers_edges_and_their_children(tmp_path):
    from conftest import run_weir

    hub = make_hub(tmp_path, "hub", HUB_RULES).start()
    try:
        common = ["--api", hub.api, "--data-dir", hub.data]
        r = run_weir("device", "create", "edge9", "--edge", *common)
        assert r.returncode == 0, r.stderr
        r = run_weir("device", "create", "kid9", "--parent", "edge9", *common)
        assert r.returncode == 0, r.stderr
        kid = hub.call("GET", "/devices/kid9").json()
        assert kid["parentScopes"] == ["ms-azure-iot-edge://edge9"]
        assert hub.call("GET", "/devices/edge9").json()["capabilities"]["iotEdge"] is True
        r = run_weir("device", "create", "orphan9", "--parent", "kid9", *common)
        assert r.returncode != 0 and "IoT Edge" in (r.stderr + r.stdout), r.stderr
    finally:
        hub.stop()
