"""MQTT over QUIC, driven by an independent client (aioquic, see quicmqtt.py): SAS
authentication, QoS 1 telemetry archived and read back with DuckDB, a twin get, a C2D
message, a wrong key refused, takeover between QUIC and TCP in both directions, a
session kept across a client address change, and no 0-RTT."""

import json
import struct
import time

import pytest

from conftest import run_weir
from quicmqtt import QuicMqtt
from rawmqtt import Raw


def parse_publish(flags, body):
    n = struct.unpack(">H", body[:2])[0]
    topic = body[2:2 + n].decode()
    qos = (flags >> 1) & 3
    pkid = struct.unpack(">H", body[2 + n:4 + n])[0] if qos else None
    return topic, pkid, body[2 + n + (2 if qos else 0):]


def next_publish(q, timeout=10):
    """The next PUBLISH from the hub, skipping acknowledgements."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        p = q.packet(max(0.1, deadline - time.time()))
        assert p is not None, "the hub closed the stream"
        if p[0] == 3:
            return parse_publish(p[1], p[2])
    raise AssertionError("no PUBLISH from the hub")


@pytest.fixture
def device(hub):
    def make(device_id):
        key = hub.create_device(device_id)["authentication"]["symmetricKey"]["primaryKey"]
        return hub.username(device_id), hub.device_token(device_id, key), key
    return make


def quic(hub, **kw):
    return QuicMqtt(hub.quic_port, hub.ca, **kw)


def test_a_device_works_over_quic(hub, device):
    user, token, _ = device("q1")
    q = quic(hub)
    assert q.alpn() == "mqtt"
    assert q.connect("q1", user, token, clean=True) == 0

    sent = [{"seq": i, "via": "quic"} for i in range(5)]
    for i, body in enumerate(sent, start=1):
        assert q.publish("devices/q1/messages/events/kind=quic", json.dumps(body).encode(), pkid=i) == i
    hub.wait_rows("archive", 5)
    rows = hub.query("archive", "SELECT device_id, body, properties['kind'] FROM t ORDER BY body")
    assert [(d, json.loads(b), k) for d, b, k in rows] == [("q1", b, "quic") for b in sent]

    # Twin: the reported patch and the read both go over the QUIC stream.
    assert q.subscribe("$iothub/twin/res/#") == b"\x01"
    from rawmqtt import publish_packet
    q.send(publish_packet("$iothub/twin/PATCH/properties/reported/?$rid=p1", b'{"fw": "1.2"}', 0, 0))
    topic, _, _ = next_publish(q)
    assert topic.startswith("$iothub/twin/res/204/?$rid=p1"), topic
    q.send(publish_packet("$iothub/twin/GET/?$rid=g1", b"", 0, 0))
    topic, _, payload = next_publish(q)
    assert topic.startswith("$iothub/twin/res/200/?$rid=g1"), topic
    assert json.loads(payload)["reported"]["fw"] == "1.2"

    # Cloud-to-device: delivered at QoS 1 with its properties, completed by the PUBACK.
    assert q.subscribe("devices/q1/messages/devicebound/#", pkid=2) == b"\x01"
    r = run_weir("device", "send", "q1", "--body", "over quic", "--message-id", "c2d-q1",
                 "--api", hub.api, "--data-dir", hub.data)
    assert r.returncode == 0, r.stderr
    topic, pkid, payload = next_publish(q)
    assert payload == b"over quic"
    assert topic.startswith("devices/q1/messages/devicebound/%24.mid=c2d-q1"), topic
    q.puback(pkid)
    q.close()
    assert hub.metric("weir_gateway_messages_total", protocol="mqtt-quic") >= 5
    assert hub.metric("weir_gateway_connections_total", protocol="mqtt-quic") == 1


def test_a_wrong_key_is_refused_over_quic(hub, device):
    user, _, key = device("q2")
    from weirhub import sas_token
    bad = sas_token(f"{hub.hostname}/devices/q2", "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXk=", int(time.time()) + 600)
    q = quic(hub)
    assert q.connect("q2", user, bad) == 5
    assert q.closed(5), "a refused connection is closed"
    q.close()
    assert hub.wait_log("signature does not match")
    assert hub.metric("weir_gateway_connects_refused_total", protocol="mqtt-quic") == 1
    # Nothing before CONNECT is accepted either.
    q = quic(hub)
    q.send(b"\x30\x05\x00\x01a{}")
    assert q.closed(5)
    q.close()


def test_takeover_between_quic_and_tcp_both_ways(hub, device):
    user, token, _ = device("q3")
    q = quic(hub)
    assert q.connect("q3", user, token) == 0
    tcp = Raw(hub.mqtt_port)
    assert tcp.connect("q3", user, token) == 0
    assert q.closed(5), "a TCP connection of the same device replaces the QUIC one"
    q.close()
    assert tcp.publish("devices/q3/messages/events/", b'{"via": "tcp"}', pkid=1) == 1

    q = quic(hub)
    assert q.connect("q3", user, token) == 0
    assert tcp.closed(5), "a QUIC connection of the same device replaces the TCP one"
    tcp.close()
    assert q.publish("devices/q3/messages/events/", b'{"via": "quic"}', pkid=1) == 1
    q.close()
    hub.wait_rows("archive", 2)
    rows = hub.query("archive", "SELECT body FROM t WHERE device_id = 'q3'")
    assert sorted(json.loads(b)["via"] for (b,) in rows) == ["quic", "tcp"]


def test_the_session_survives_a_client_address_change(hub, device):
    user, token, _ = device("q4")
    q = quic(hub)
    assert q.connect("q4", user, token) == 0
    assert q.publish("devices/q4/messages/events/", b'{"n": 1}', pkid=1) == 1
    before = q.local_port()
    after = q.rebind()
    assert after != before
    # Same MQTT session, no new CONNECT: the hub acknowledges on the new path.
    assert q.publish("devices/q4/messages/events/", b'{"n": 2}', pkid=2) == 2
    assert q.publish("devices/q4/messages/events/", b'{"n": 3}', pkid=3) == 3
    q.close()
    assert hub.metric("weir_gateway_connections_total", protocol="mqtt-quic") == 1
    hub.wait_rows("archive", 3)


def test_resumption_works_without_0rtt(hub, device):
    user, token, _ = device("q5")
    tickets = []
    q = quic(hub, on_ticket=tickets.append)
    assert q.connect("q5", user, token) == 0
    q.close()
    assert tickets, "the hub issues session tickets"
    assert all(t.max_early_data_size in (None, 0) for t in tickets), "0-RTT must not be offered"
    resumed = quic(hub, session_ticket=tickets[-1])
    assert resumed.protocol._quic.tls.session_resumed
    assert resumed.connect("q5", user, token) == 0
    assert resumed.publish("devices/q5/messages/events/", b"{}", pkid=1) == 1
    resumed.close()
