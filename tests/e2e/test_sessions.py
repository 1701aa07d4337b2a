"""Session rules: one connection per device, keep-alive at 1.5×, subscriptions kept for
persistent sessions, and `weir device send`."""

import json
import time

from conftest import run_weir
from rawmqtt import Raw
from mqttclients import Device


def test_a_new_connection_replaces_the_old_one(hub):
    key = hub.create_device("twice")["authentication"]["symmetricKey"]["primaryKey"]
    first = Raw(hub.mqtt_port)
    assert first.connect("twice", hub.username("twice"), hub.device_token("twice", key)) == 0
    second = Raw(hub.mqtt_port)
    assert second.connect("twice", hub.username("twice"), hub.device_token("twice", key)) == 0
    assert first.closed(5), "the older connection is closed"
    assert second.publish("devices/twice/messages/events/", b"{}", pkid=1) == 1
    second.close()


def test_keep_alive_is_enforced_at_one_and_a_half_times(hub):
    from rawmqtt import connect_packet
    key = hub.create_device("quiet")["authentication"]["symmetricKey"]["primaryKey"]
    r = Raw(hub.mqtt_port, timeout=10)
    r.send(connect_packet("quiet", hub.username("quiet"), hub.device_token("quiet", key), keepalive=2))
    assert r.packet()[0] == 2
    t0 = time.time()
    assert r.closed(10)
    waited = time.time() - t0
    assert 2.8 < waited < 4.5, f"closed after {waited:.1f} s; expected 3 s (1.5 × 2)"
    assert hub.wait_log("keep-alive expired"), hub.log_text()[-2000:]


def test_persistent_sessions_keep_subscriptions_and_clean_ones_do_not(hub):
    key = hub.create_device("sess")["authentication"]["symmetricKey"]["primaryKey"]
    d = Device(hub, "sess", hub.device_token("sess", key))
    assert d.connect() == 0
    d.client.subscribe("devices/sess/messages/devicebound/#", qos=1)
    time.sleep(0.5)
    d.close()
    got = []
    again = Device(hub, "sess", hub.device_token("sess", key))
    again.client.on_message = lambda c, u, m: got.append(m)
    assert again.connect() == 0
    r = run_weir("device", "send", "sess", "--body", "hello", "--prop", "color=blue sky", "--message-id", "cli-1",
                 "--api", hub.api, "--data-dir", hub.data)
    assert r.returncode == 0, r.stderr
    deadline = time.time() + 10
    while not got and time.time() < deadline:
        time.sleep(0.1)
    assert got and got[0].payload == b"hello"
    assert got[0].topic.startswith("devices/sess/messages/devicebound/%24.mid=cli-1")
    assert "color=blue%20sky" in got[0].topic
    again.close()
    # A clean session forgets them: the next message waits.
    clean = Device(hub, "sess", hub.device_token("sess", key), clean_session=True)
    assert clean.connect() == 0
    run_weir("device", "send", "sess", "--body", "later", "--api", hub.api, "--data-dir", hub.data)
    time.sleep(1)
    assert hub.call("GET", "/devices/sess").json()["cloudToDeviceMessageCount"] == 1
    clean.close()


def test_a_message_in_flight_goes_out_again_when_the_device_reconnects_before_the_old_socket_closes(hub):
    """NAT rebinding: the device's old TCP connection is still open when it connects again."""
    from rawmqtt import puback_packet, subscribe_packet
    key = hub.create_device("nat")["authentication"]["symmetricKey"]["primaryKey"]
    token = hub.device_token("nat", key)
    old = Raw(hub.mqtt_port)
    assert old.connect("nat", hub.username("nat"), token) == 0
    old.send(subscribe_packet(1, "devices/nat/messages/devicebound/#"))
    assert old.packet()[0] == 9, "SUBACK"
    r = hub.call("POST", "/devices/nat/messages/deviceBound", headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 204, r.text
    kind, flags, body = old.packet()
    assert kind == 3, "the message is delivered to the first connection"
    # ... which never acknowledges it: its socket is silently gone from the device's side.
    new = Raw(hub.mqtt_port)
    assert new.connect("nat", hub.username("nat"), token) == 0
    p = new.packet()
    assert p is not None and p[0] == 3, f"the in-flight message must go out again, got {p}"
    topic_len = int.from_bytes(p[2][:2], "big")
    pkid = int.from_bytes(p[2][2 + topic_len:4 + topic_len], "big")
    new.send(puback_packet(pkid))
    deadline = time.time() + 5
    while hub.call("GET", "/devices/nat").json()["cloudToDeviceMessageCount"] and time.time() < deadline:
        time.sleep(0.1)
    assert hub.call("GET", "/devices/nat").json()["cloudToDeviceMessageCount"] == 0
    old.close()
    new.close()


def test_pubacks_follow_publish_order_across_telemetry_and_twin_requests(hub):
    """MQTT 3.1.1 §4.6: a twin request's PUBACK may not overtake earlier telemetry's."""
    from rawmqtt import publish_packet
    import struct
    key = hub.create_device("order")["authentication"]["symmetricKey"]["primaryKey"]
    raw = Raw(hub.mqtt_port)
    assert raw.connect("order", hub.username("order"), hub.device_token("order", key)) == 0
    burst = b"".join([
        publish_packet("devices/order/messages/events/", b'{"n": 1}', 1, 1),
        publish_packet("$iothub/twin/GET/?$rid=r1", b"", 1, 2),
        publish_packet("devices/order/messages/events/", b'{"n": 2}', 1, 3),
        publish_packet("$iothub/twin/PATCH/properties/reported/?$rid=r2", b'{"x": 1}', 1, 4),
    ])
    for _ in range(20):
        raw.send(burst)
        pubacks = []
        while len(pubacks) < 4:
            kind, _, body = raw.packet()
            if kind == 4:
                pubacks.append(struct.unpack(">H", body[:2])[0])
        assert pubacks == [1, 2, 3, 4], f"PUBACKs out of order: {pubacks}"
    raw.close()
