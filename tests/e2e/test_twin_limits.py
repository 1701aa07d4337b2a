"""One device cannot take the hub down: twins are held to IoT Hub's nesting limit over REST
and MQTT, and the hub starts again afterwards."""

import json
import threading

import paho.mqtt.client as mqtt

from mqttclients import Device


def nested(levels):
    v = {"property": "value"}
    for i in range(levels):
        v = {f"l{i}": v}
    return v


def test_deep_twin_documents_are_refused_everywhere(hub):
    key = hub.create_device("deep")["authentication"]["symmetricKey"]["primaryKey"]
    ok = hub.call("PATCH", "/twins/deep", {"properties": {"desired": nested(10)}}, headers={"If-Match": "*"})
    assert ok.status_code == 200, "ten levels, IoT Hub's limit, are fine"
    for body in ({"properties": {"desired": nested(11)}}, {"tags": nested(125)}):
        r = hub.call("PATCH", "/twins/deep", body, headers={"If-Match": "*"})
        assert r.status_code == 400 and "deep" in r.text, r.text
    r = hub.call("PUT", "/devices/deep", {"deviceId": "deep", "tags": nested(12)}, headers={"If-Match": "*"})
    assert r.status_code == 400, r.text

    d = Device(hub, "deep", hub.device_token("deep", key))
    responses = {}
    got = threading.Event()

    def on_message(client, userdata, msg):
        responses[msg.topic] = msg.payload
        got.set()

    d.client.on_message = on_message
    assert d.connect() == 0
    d.client.subscribe("$iothub/twin/res/#", qos=0)
    for rid, levels in (("1", 125), ("2", 10)):
        got.clear()
        d.client.publish(f"$iothub/twin/PATCH/properties/reported/?$rid={rid}", json.dumps(nested(levels)), qos=1)
        assert got.wait(5), "no twin response"
    d.close()
    assert any(t.startswith("$iothub/twin/res/400/?$rid=1") for t in responses), responses
    assert any(t.startswith("$iothub/twin/res/204/?$rid=2") for t in responses), responses

    # The hub starts again: nothing it accepted is too deep to read back.
    assert hub.stop() == 0
    hub.start()
    twin = hub.call("GET", "/twins/deep").json()
    assert twin["properties"]["reported"]["l9"]["l8"]["l7"]["l6"]["l5"]["l4"]["l3"]["l2"]["l1"]["l0"] == {"property": "value"}
    assert hub.metrics()["weir_registry_quarantined"] == 0
