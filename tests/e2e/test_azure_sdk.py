"""The unmodified Azure IoT device SDK (azure-iot-device 2.14) against Weir, over MQTT/TLS
on 8883 and over WebSocket on 443: telemetry, twins, direct methods, cloud-to-device
messages, token renewal, and the events these produce."""

import datetime
import json
import shutil
import threading
import time

import pytest
from azure.iot.device import IoTHubDeviceClient, Message, MethodResponse

from conftest import FIXTURES
from weirhub import Hub

FIXED = {"mqtts": 8883, "https": 443}



@pytest.fixture
def sdk_hub(tmp_path, rules_dir):
    shutil.copy(FIXTURES / "extra" / "events.toml", rules_dir)
    h = Hub(tmp_path, rules_dir, fixed_ports=FIXED).start()
    yield h
    h.stop()


def device(hub, device_id, websockets, **kw):
    key = hub.create_device(device_id)["authentication"]["symmetricKey"]["primaryKey"]
    ca = open(hub.ca).read()
    client = IoTHubDeviceClient.create_from_connection_string(
        hub.connection_string(device_id, key), server_verification_cert=ca, websockets=websockets,
        connection_retry_interval=1, **kw)
    return client


def wait_for(pred, timeout=15, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.parametrize("websockets", [False, True], ids=["mqtt-tls", "websocket"])
def test_telemetry_with_properties_reaches_parquet(sdk_hub, websockets):
    hub = sdk_hub
    c = device(hub, "sdk-tel", websockets)
    c.connect()
    for i in range(100):
        m = Message(json.dumps({"temp": 20 + i / 10, "hum": i, "seq": i}), content_type="application/json", content_encoding="utf-8")
        m.message_id = f"m-{i}"
        m.correlation_id = f"c-{i}"
        m.custom_properties["path"] = "a/b c&d=e"
        m.custom_properties["seq"] = str(i)
        c.send_message(m)
    c.shutdown()
    hub.wait_rows("archive", 100)
    rows = hub.query("archive", "SELECT message_id, correlation_id, content_type, properties, seq FROM t ORDER BY seq")
    assert [r[4] for r in rows] == list(range(100))
    for i, (mid, cid, ct, props, seq) in enumerate(rows):
        assert (mid, cid, ct) == (f"m-{i}", f"c-{i}", "application/json")
        assert props == {"path": "a/b c&d=e", "seq": str(i)}


@pytest.mark.parametrize("websockets", [False, True], ids=["mqtt-tls", "websocket"])
def test_twin_get_patch_and_desired_push(sdk_hub, websockets):
    hub = sdk_hub
    c = device(hub, "sdk-twin", websockets)
    patches = []
    c.on_twin_desired_properties_patch_received = patches.append
    c.connect()
    twin = c.get_twin()
    assert twin["desired"]["$version"] == 1 and twin["reported"]["$version"] == 1
    c.patch_twin_reported_properties({"firmware": "1.2.3", "limits": {"max": 30}})
    c.patch_twin_reported_properties({"limits": {"max": None}, "online": True})
    t = hub.call("GET", "/twins/sdk-twin").json()
    reported = t["properties"]["reported"]
    assert reported["firmware"] == "1.2.3" and reported["online"] is True and reported["limits"] == {}
    assert reported["$version"] == 3 and "$lastUpdated" in reported["$metadata"]["firmware"]
    r = hub.call("PATCH", "/twins/sdk-twin", {"tags": {"site": "berlin"}, "properties": {"desired": {"fan": "on", "speed": 3}}},
                 headers={"If-Match": f'"{t["etag"]}"'})
    assert r.status_code == 200, r.text
    assert r.json()["tags"] == {"site": "berlin"}
    # On connect the SDK reads the twin and reports its desired part as a first "patch".
    wait_for(lambda: any(p.get("$version") == 2 for p in patches), what="the desired patch")
    assert [p for p in patches if p.get("$version") == 2] == [{"fan": "on", "speed": 3, "$version": 2}]
    r = hub.call("PATCH", "/twins/sdk-twin", {"properties": {"desired": {"fan": None}}}, headers={"If-Match": '"stale"'})
    assert r.status_code == 412
    big = {"properties": {"desired": {"blob": "x" * 40000}}}
    r = hub.call("PATCH", "/twins/sdk-twin", big)
    assert r.status_code == 400 and "32768" in r.json()["Message"]
    assert c.get_twin()["desired"] == {"fan": "on", "speed": 3, "$version": 2}
    c.shutdown()


@pytest.mark.parametrize("websockets", [False, True], ids=["mqtt-tls", "websocket"])
def test_direct_methods_answered_offline_and_timeout(sdk_hub, websockets):
    hub = sdk_hub
    c = device(hub, "sdk-meth", websockets)

    def on_method(req):
        if req.name == "slow":
            return  # never answers
        c.send_method_response(MethodResponse.create_from_method_request(req, 201, {"echo": req.payload, "name": req.name}))

    r = hub.call("POST", "/twins/sdk-meth/methods", {"methodName": "reboot", "payload": {"delay": 1}})
    assert r.status_code == 404, "not connected yet"
    c.on_method_request_received = on_method
    c.connect()
    time.sleep(0.5)
    r = hub.call("POST", "/twins/sdk-meth/methods", {"methodName": "reboot", "payload": {"delay": 1}, "responseTimeoutInSeconds": 10})
    assert r.status_code == 200, r.text
    assert r.json() == {"status": 201, "payload": {"echo": {"delay": 1}, "name": "reboot"}}
    t0 = time.time()
    r = hub.call("POST", "/twins/sdk-meth/methods", {"methodName": "slow", "payload": None, "responseTimeoutInSeconds": 5})
    assert r.status_code == 504 and 4.5 < time.time() - t0 < 9
    c.shutdown()
    time.sleep(0.5)
    r = hub.call("POST", "/twins/sdk-meth/methods", {"methodName": "reboot", "payload": {}})
    assert r.status_code == 404 and "DeviceNotOnline" in r.json()["Message"]


@pytest.mark.parametrize("websockets", [False, True], ids=["mqtt-tls", "websocket"])
def test_c2d_waits_for_the_device_and_expired_ones_become_feedback(sdk_hub, websockets):
    hub = sdk_hub
    c = device(hub, "sdk-c2d", websockets)
    soon = (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=2)).isoformat()
    r = hub.call("POST", "/devices/sdk-c2d/messages/deviceBound", None,
                 headers={"iothub-messageid": "gone", "iothub-expiry": soon, "iothub-ack": "full"})
    assert r.status_code == 204
    r = requests_post_raw(hub, "/devices/sdk-c2d/messages/deviceBound", b'{"cmd": "on"}', {
        "Content-Type": "application/json", "iothub-messageid": "keep", "iothub-correlationid": "corr-9",
        "iothub-ack": "full", "iothub-app-color": "blue sky", "iothub-app-path": "a/b&c"})
    assert r.status_code == 204
    assert hub.call("GET", "/devices/sdk-c2d").json()["cloudToDeviceMessageCount"] == 2
    time.sleep(3)
    received = []
    c.on_message_received = received.append
    c.connect()
    wait_for(lambda: received, what="the cloud-to-device message")
    time.sleep(1)
    assert len(received) == 1, [m.message_id for m in received]
    m = received[0]
    assert (m.message_id, m.correlation_id, m.data) == ("keep", "corr-9", b'{"cmd": "on"}')
    assert m.custom_properties == {"color": "blue sky", "path": "a/b&c"}
    assert m.content_type == "application/json"
    c.shutdown()
    wait_for(lambda: hub.call("GET", "/devices/sdk-c2d").json()["cloudToDeviceMessageCount"] == 0, what="completion")
    r = hub.call("GET", "/messages/serviceBound/feedback")
    assert r.status_code == 200
    codes = sorted((f["originalMessageId"], f["statusCode"]) for f in r.json())
    assert codes == [("gone", "Expired"), ("keep", "Success")]
    assert hub.call("DELETE", f"/messages/serviceBound/feedback/{r.headers['iothub-lockToken']}").status_code == 204
    assert hub.call("GET", "/messages/serviceBound/feedback").status_code == 204


def requests_post_raw(hub, path, body, headers):
    import requests
    h = hub.service_headers()
    h.update(headers)
    return requests.post(f"{hub.api}{path}?api-version=2021-04-12", data=body, headers=h, timeout=10)


def test_c2d_queue_limit_and_purge(sdk_hub):
    hub = sdk_hub
    hub.create_device("sdk-full")
    for i in range(50):
        assert requests_post_raw(hub, "/devices/sdk-full/messages/deviceBound", b"x", {}).status_code == 204
    r = requests_post_raw(hub, "/devices/sdk-full/messages/deviceBound", b"x", {})
    assert r.status_code == 403 and "DeviceMaximumQueueDepthExceeded" in r.json()["Message"]
    r = hub.call("DELETE", "/devices/sdk-full/commands")
    assert r.status_code == 200 and r.json()["totalMessagesPurged"] == 50
    too_late = (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=49)).isoformat()
    assert requests_post_raw(hub, "/devices/sdk-full/messages/deviceBound", b"x", {"iothub-expiry": too_late}).status_code == 400


def test_token_renewal_keeps_methods_and_c2d(sdk_hub):
    hub = sdk_hub
    # With a 125 s token the SDK renews 120 s early: it reconnects every ~5 s, and never
    # subscribes again; the session must keep its subscriptions.
    c = device(hub, "sdk-renew", False, sastoken_ttl=125)
    received = []
    c.on_message_received = received.append
    c.on_method_request_received = lambda req: c.send_method_response(MethodResponse.create_from_method_request(req, 200, "pong"))
    c.connect()
    before = hub.metric("weir_gateway_connections_total")
    time.sleep(12)
    assert hub.metric("weir_gateway_connections_total") >= before + 2, "the SDK should have reconnected to renew its token"
    r = hub.call("POST", "/twins/sdk-renew/methods", {"methodName": "ping", "responseTimeoutInSeconds": 10})
    assert r.status_code == 200 and r.json() == {"status": 200, "payload": "pong"}
    assert requests_post_raw(hub, "/devices/sdk-renew/messages/deviceBound", b"after renewal", {}).status_code == 204
    wait_for(lambda: received, what="C2D after renewal")
    assert received[0].data == b"after renewal"
    c.shutdown()


def test_twin_and_connection_events_are_routed_to_parquet(sdk_hub):
    hub = sdk_hub
    c = device(hub, "sdk-events", False)
    c.connect()
    c.patch_twin_reported_properties({"battery": 80})
    hub.call("PATCH", "/twins/sdk-events", {"properties": {"desired": {"mode": "eco"}}})
    c.shutdown()
    hub.call("DELETE", "/devices/sdk-events")
    wait_for(lambda: len(hub.query("events", "SELECT * FROM t WHERE device_id = 'sdk-events'")) >= 5, what="events in Parquet")
    rows = hub.query("events", "SELECT properties['opType'], properties['iothub-message-schema'], body FROM t WHERE device_id = 'sdk-events' ORDER BY enqueued_time")
    ops = [r[0] for r in rows]
    assert ops[0] == "createDeviceIdentity" and "deleteDeviceIdentity" in ops
    assert "deviceConnected" in ops and "deviceDisconnected" in ops
    assert ops.count("updateTwin") == 2
    reported = [json.loads(b) for op, _, b in rows if op == "updateTwin" and "reported" in json.loads(b).get("properties", {})]
    assert reported[0]["properties"]["reported"]["battery"] == 80
    schemas = {r[1] for r in rows}
    assert schemas == {"deviceLifecycleNotification", "deviceConnectionStateNotification", "twinChangeNotification"}


def test_routes_read_the_live_twin(tmp_path, rules_dir):
    (rules_dir / "twin.toml").write_text('''
[[endpoint]]
name = "eco"
type = "parquet"
[[route]]
name = "eco-mode"
condition = "$twin.properties.desired.mode = 'eco' AND $twin.properties.reported.battery < 50"
endpoints = ["eco"]
[[enrichment]]
key = "firmware"
value = "$twin.properties.reported.fw"
endpoints = ["eco"]
''')
    hub = Hub(tmp_path, rules_dir, fixed_ports=FIXED).start()
    try:
        c = device(hub, "sdk-live", False)
        c.connect()
        c.send_message(Message('{"n": 1}'))
        c.patch_twin_reported_properties({"battery": 20, "fw": "2.0"})
        hub.call("PATCH", "/twins/sdk-live", {"properties": {"desired": {"mode": "eco"}}})
        c.send_message(Message('{"n": 2}'))
        c.shutdown()
        hub.wait_rows("eco", 1)
        time.sleep(1)
        assert hub.query("eco", "SELECT body, properties['firmware'] FROM t") == [('{"n": 2}', "2.0")]
    finally:
        hub.stop()
