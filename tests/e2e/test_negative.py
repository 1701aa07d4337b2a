"""Bad credentials and bad behaviour get the documented outcome; other clients carry on."""

import json
import shutil
import subprocess
import time

import pytest

from mqttclients import Device
from weirhub import Hub


@pytest.fixture
def small_hub(tmp_path, rules_dir):
    h = Hub(tmp_path, rules_dir, config="[mqtt]\nmax_message_bytes = 4096\n").start()
    yield h
    h.stop()


def test_refusals_and_violations_do_not_hurt_other_clients(small_hub):
    hub = small_hub
    good_key = hub.create_device("good")["authentication"]["symmetricKey"]["primaryKey"]
    other_key = hub.create_device("other")["authentication"]["symmetricKey"]["primaryKey"]
    hub.create_device("off", status="disabled")
    off_key = hub.call("GET", "/devices/off").json()["authentication"]["symmetricKey"]["primaryKey"]

    good = Device(hub, "good", hub.device_token("good", good_key))
    assert good.connect() == 0
    sent = 0

    def good_still_works():
        nonlocal sent
        sent += 1
        assert good.publish(good.telemetry_topic(), json.dumps({"seq": sent})), "the good client was affected"

    good_still_works()

    # Bad signature: signed with another device's key.
    bad = Device(hub, "other", hub.device_token("other", good_key))
    assert bad.connect() == 5
    good_still_works()

    # Expired token.
    expired = Device(hub, "other", hub.device_token("other", other_key, ttl=-60))
    assert expired.connect() == 5
    good_still_works()

    # Disabled device with a valid token.
    disabled = Device(hub, "off", hub.device_token("off", off_key))
    assert disabled.connect() == 5
    good_still_works()

    # Unknown device.
    unknown = Device(hub, "ghost", hub.device_token("ghost", good_key))
    assert unknown.connect() == 5
    good_still_works()

    # mosquitto_pub with a bad signature is refused too.
    r = subprocess.run(
        ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(hub.mqtts_port), "--cafile", hub.ca, "-i", "other",
         "-u", hub.username("other"), "-P", hub.device_token("other", good_key), "-q", "1",
         "-t", "devices/other/messages/events/", "-m", "x"],
        capture_output=True, text=True, timeout=30,
    )
    assert r.returncode != 0 and "not authori" in (r.stderr + r.stdout).lower()
    good_still_works()

    # Publishing to another device's topic closes that connection, unacknowledged.
    o = Device(hub, "other", hub.device_token("other", other_key))
    assert o.connect() == 0
    assert not o.publish("devices/good/messages/events/", json.dumps({"spoof": True}))
    assert o.disconnected.wait(5)
    o.close()
    good_still_works()

    # Oversize message: over the configured 4096 bytes, the connection is closed.
    o = Device(hub, "other", hub.device_token("other", other_key))
    assert o.connect() == 0
    assert not o.publish(o.telemetry_topic(), json.dumps({"big": "x" * 5000}))
    assert o.disconnected.wait(5)
    o.close()
    good_still_works()

    # Subscribing outside the device's own topics closes the connection.
    o = Device(hub, "other", hub.device_token("other", other_key))
    assert o.connect() == 0
    o.client.subscribe("devices/good/messages/devicebound/#", qos=1)
    assert o.disconnected.wait(5)
    o.close()
    good_still_works()

    good.close()
    hub.wait_rows("archive", sent)
    time.sleep(1)
    rows = hub.query("archive", "SELECT device_id, body FROM t")
    assert sorted(json.loads(b)["seq"] for d, b in rows if d == "good") == list(range(1, sent + 1))
    assert not [r for r in rows if "spoof" in r[1] or "big" in r[1]], "refused messages were archived"

    log = hub.log_text()
    for reason in ["signature does not match", "expired", "disabled", "not registered",
                   "is not allowed for this device", "exceeds the limit of 4096 bytes"]:
        assert reason in log, f"log does not explain: {reason}"
    assert good_key not in log and "sig=" not in log, "secrets in the log"
    m = hub.metrics()
    assert hub.metric("weir_gateway_connects_refused_total", protocol="mqtt") >= 5
    assert hub.metric("weir_gateway_protocol_errors_total", protocol="mqtt") >= 3


def test_garbage_and_silence_before_connect_are_dropped(hub):
    import socket
    key = hub.create_device("fine")["authentication"]["symmetricKey"]["primaryKey"]
    garbage = socket.create_connection(("127.0.0.1", hub.mqtt_port))
    garbage.sendall(b"\x10\xff\xff\xff\xff\x7fGARBAGE" * 10)
    garbage.settimeout(5)
    assert garbage.recv(100) == b"", "the server closes a connection that sends garbage"
    silent = socket.create_connection(("127.0.0.1", hub.mqtt_port))
    d = Device(hub, "fine", hub.device_token("fine", key), tls=False)
    assert d.connect() == 0
    assert d.publish(d.telemetry_topic(), '{"ok": 1}')
    d.close()
    silent.close()
