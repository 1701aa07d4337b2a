"""Revocation reaches live sessions: deleting or disabling a device, replacing its key and
its SAS token expiring each cut its open connection within a second, over TLS and over
WebSocket; nothing the device sends after the cut was ordered is acknowledged or archived;
a fresh credential connects again."""

import json
import threading
import time

import paho.mqtt.client as mqtt
import pytest

from weirhub import Hub, free_port

CONNECTION_RULES = """
[[endpoint]]
name = "conn"
type = "parquet"

[[route]]
name = "connections"
source = "DeviceConnectionStateEvents"
endpoints = ["conn"]
"""


@pytest.fixture(scope="module")
def rhub(tmp_path_factory):
    import shutil
    from conftest import FIXTURES
    tmp = tmp_path_factory.mktemp("revocation")
    rules = tmp / "rules"
    shutil.copytree(FIXTURES / "rules", rules)
    (rules / "conn.toml").write_text(CONNECTION_RULES)
    h = Hub(tmp, rules, fixed_ports={"https": free_port()}).start()
    yield h
    h.stop()


class Client:
    """A paho client over MQTT/TLS or MQTT over WebSocket that keeps publishing QoS 1 and
    records, per message, when it was handed to paho and whether the hub acknowledged it."""

    def __init__(self, hub, device_id, token, transport):
        self.hub = hub
        self.device_id = device_id
        self.c = mqtt.Client(client_id=device_id, clean_session=True, protocol=mqtt.MQTTv311,
                             transport="websockets" if transport == "websocket" else "tcp")
        if transport == "websocket":
            self.c.ws_set_options(path="/$iothub/websocket")
            self.port = hub.https_port
        else:
            self.port = hub.mqtts_port
        self.c.username_pw_set(hub.username(device_id), token)
        self.c.tls_set(ca_certs=hub.ca)
        self.connack = None
        self.connected = threading.Event()
        self.gone = threading.Event()
        self.gone_at = None
        self.sent = {}        # paho mid -> (our id, time handed to paho)
        self.acked = set()    # our ids
        self.lock = threading.Lock()
        self.c.on_connect = self._on_connect
        self.c.on_disconnect = self._on_disconnect
        self.c.on_publish = self._on_publish
        self.stop = threading.Event()
        self.seq = 0

    def _on_connect(self, c, u, flags, rc):
        self.connack = rc
        self.connected.set()

    def _on_disconnect(self, c, u, rc):
        self.gone_at = time.time()
        self.gone.set()

    def _on_publish(self, c, u, mid):
        with self.lock:
            entry = self.sent.get(mid)
        if entry:
            self.acked.add(entry[0])

    def connect(self):
        self.c.reconnect_delay_set(min_delay=60, max_delay=120)
        self.c.connect("localhost", self.port, keepalive=60)
        self.c.loop_start()
        assert self.connected.wait(10), f"no CONNACK; the hub logged:\n{self.hub.log_text()[-3000:]}"
        return self.connack

    def publish_forever(self):
        def run():
            while not self.stop.is_set() and not self.gone.is_set():
                msg = f"{self.device_id}-{self.seq}"
                self.seq += 1
                with self.lock:
                    info = self.c.publish(f"devices/{self.device_id}/messages/events/%24.mid={msg}",
                                          json.dumps({"id": msg}), qos=1)
                    self.sent[info.mid] = (msg, time.time())
                time.sleep(0.02)
        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def close(self):
        self.stop.set()
        if hasattr(self, "thread"):
            self.thread.join(5)
        self.c.disconnect()
        self.c.loop_stop()


def key_of(doc):
    return doc["authentication"]["symmetricKey"]["primaryKey"]


def revoked_total(hub, reason):
    return hub.metric("weir_connections_revoked_total", reason=reason)


def cut_and_check(hub, client, revoke, reason):
    """Runs `revoke` while the client publishes; the connection must drop within 1 s of the
    REST call returning, and nothing handed to paho after that may be acknowledged."""
    before = revoked_total(hub, reason)
    client.publish_forever()
    deadline = time.time() + 5
    while len(client.acked) < 5 and time.time() < deadline:
        time.sleep(0.02)
    assert len(client.acked) >= 5, "the device should be working before the cut"
    ordered = revoke()
    assert client.gone.wait(5), "the connection was not closed"
    assert client.gone_at - ordered <= 1.0, f"cut {client.gone_at - ordered:.2f} s after the revocation"
    client.close()
    late = {m for m, t in client.sent.values() if t > ordered}
    assert not (late & client.acked), f"acknowledged after the cut was ordered: {sorted(late & client.acked)[:3]}"
    assert revoked_total(hub, reason) == before + 1
    return late


def test_nothing_is_acknowledged_once_the_cut_is_ordered(rhub):
    from rawmqtt import Raw, publish_packet
    dev = "del-raw"
    key = key_of(rhub.create_device(dev))
    raw = Raw(rhub.mqtt_port)
    assert raw.connect(dev, rhub.username(dev), rhub.device_token(dev, key)) == 0
    assert raw.publish(f"devices/{dev}/messages/events/", b'{"id": "before"}', pkid=1) == 1
    assert rhub.call("DELETE", f"/devices/{dev}").status_code == 204
    try:
        raw.send(publish_packet(f"devices/{dev}/messages/events/", b'{"id": "after"}', 1, 2))
    except OSError:
        pass
    try:
        p = raw.packet()
    except OSError:
        p = None
    assert p is None, f"the hub answered {p} after the device was deleted"
    raw.close()


def wait_disconnected_event(hub, device_id, count, timeout=15):
    deadline = time.time() + timeout
    n = 0
    while time.time() < deadline:
        rows = hub.query("conn", f"SELECT count(*) FROM t WHERE device_id = '{device_id}' "
                                 "AND properties['opType'] = 'deviceDisconnected'")
        n = rows[0][0] if rows else 0
        if n >= count:
            return
        time.sleep(0.2)
    raise AssertionError(f"{n} deviceDisconnected events for {device_id}, expected {count}")


def archived_ids(hub, device_id):
    return {json.loads(b)["id"] for (b,) in hub.query("archive", f"SELECT body FROM t WHERE device_id = '{device_id}'")}


TRANSPORTS = ["tls", "websocket"]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_deleting_a_device_cuts_it(rhub, transport):
    dev = f"del-{transport}"
    c = Client(rhub, dev, rhub.device_token(dev, key_of(rhub.create_device(dev))), transport)
    assert c.connect() == 0

    def revoke():
        assert rhub.call("DELETE", f"/devices/{dev}").status_code == 204
        return time.time()

    late = cut_and_check(rhub, c, revoke, "deleted")
    wait_disconnected_event(rhub, dev, 1)
    again = Client(rhub, dev, rhub.device_token(dev, key_of(rhub.create_device(dev))), transport)
    assert again.connect() == 0, "re-created with new keys, a fresh token connects"
    again.close()
    rhub.wait_rows("archive", 1)
    time.sleep(1)
    assert not (late & archived_ids(rhub, dev)), "nothing sent after the cut is archived"


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_disabling_a_device_cuts_it(rhub, transport):
    dev = f"dis-{transport}"
    key = key_of(rhub.create_device(dev))
    c = Client(rhub, dev, rhub.device_token(dev, key), transport)
    assert c.connect() == 0

    def revoke():
        r = rhub.call("PUT", f"/devices/{dev}", {"deviceId": dev, "status": "disabled"}, headers={"If-Match": "*"})
        assert r.status_code == 200, r.text
        return time.time()

    cut_and_check(rhub, c, revoke, "disabled")
    wait_disconnected_event(rhub, dev, 1)
    refused = Client(rhub, dev, rhub.device_token(dev, key), transport)
    assert refused.connect() == 5, "a disabled device may not connect"
    refused.close()
    r = rhub.call("PUT", f"/devices/{dev}", {"deviceId": dev, "status": "enabled"}, headers={"If-Match": "*"})
    assert r.status_code == 200
    again = Client(rhub, dev, rhub.device_token(dev, key), transport)
    assert again.connect() == 0
    again.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_replacing_the_key_cuts_connections_that_used_it(rhub, transport):
    dev = f"rot-{transport}"
    doc = rhub.create_device(dev)
    primary, secondary = key_of(doc), doc["authentication"]["symmetricKey"]["secondaryKey"]
    c = Client(rhub, dev, rhub.device_token(dev, primary), transport)
    assert c.connect() == 0
    new_primary = "bmV3LXByaW1hcnkta2V5LWZvci10ZXN0aW5nLTEyMw=="

    def revoke():
        body = {"deviceId": dev, "authentication": {"type": "sas", "symmetricKey": {
            "primaryKey": new_primary, "secondaryKey": secondary}}}
        r = rhub.call("PUT", f"/devices/{dev}", body, headers={"If-Match": "*"})
        assert r.status_code == 200, r.text
        return time.time()

    cut_and_check(rhub, c, revoke, "credential")
    old = Client(rhub, dev, rhub.device_token(dev, primary), transport)
    assert old.connect() == 5, "the replaced key no longer works"
    old.close()
    again = Client(rhub, dev, rhub.device_token(dev, new_primary), transport)
    assert again.connect() == 0
    # A connection on the key that stayed survives a change to the other one.
    body = {"deviceId": dev, "authentication": {"type": "sas", "symmetricKey": {
        "primaryKey": new_primary, "secondaryKey": "b3RoZXItc2Vjb25kYXJ5LWtleS0xMjM0NTY3OA=="}}}
    assert rhub.call("PUT", f"/devices/{dev}", body, headers={"If-Match": "*"}).status_code == 200
    time.sleep(1)
    assert not again.gone.is_set(), "a connection whose key is unchanged stays"
    again.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_an_expired_token_cuts_the_connection(rhub, transport):
    dev = f"exp-{transport}"
    key = key_of(rhub.create_device(dev))
    expiry = int(time.time()) + 3
    from weirhub import sas_token
    token = sas_token(f"{rhub.hostname}/devices/{dev}", key, expiry)
    before = revoked_total(rhub, "expired")
    c = Client(rhub, dev, token, transport)
    assert c.connect() == 0
    c.publish_forever()
    assert c.gone.wait(10), "the connection outlived its token"
    # Valid through second `se`; cut once it has passed.
    assert expiry < c.gone_at <= expiry + 2.0, f"cut at se{c.gone_at - expiry:+.2f} s"
    c.close()
    late = {m for m, t in c.sent.values() if t > expiry + 1}
    assert not (late & c.acked)
    assert revoked_total(rhub, "expired") == before + 1
    wait_disconnected_event(rhub, dev, 1)
    again = Client(rhub, dev, rhub.device_token(dev, key), transport)
    assert again.connect() == 0, "a fresh token connects"
    again.close()
