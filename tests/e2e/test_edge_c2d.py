"""Cloud-to-device messages for a child pass hub -> edge -> child: the edge acknowledges a
message to the hub once it holds it in its own queue (the hub records the delivery as
successful feedback), and delivers it to the child whenever the child connects, also while
the hub is unreachable."""

import json
import threading
import time
import urllib.parse

import requests
from mqttclients import Device
from edgehub import EDGE_RULES, HUB_RULES, make_hub, put_device, shut_down, start_edge, wait_for


def post_c2d(hub, device, body, message_id, **app):
    headers = hub.service_headers()
    headers.update({"iothub-messageid": message_id, "iothub-ack": "positive",
                    "Content-Type": "application/json"})
    headers.update({f"iothub-app-{k}": v for k, v in app.items()})
    r = requests.post(f"{hub.api}/devices/{device}/messages/deviceBound?api-version=2021-04-12",
                      data=body, headers=headers, timeout=10)
    assert r.status_code == 204, r.text


class Receiver:
    """A child connected to the edge with paho, subscribed to its cloud-to-device topic."""

    def __init__(self, edge, name, key):
        self.messages = []
        self.lock = threading.Lock()
        self.device = Device(edge, name, edge.device_token(name, key), tls=False, clean_session=True)
        self.device.client.on_message = self._on_message
        assert self.device.connect() == 0
        self.device.client.subscribe(f"devices/{name}/messages/devicebound/#", qos=1)

    def _on_message(self, client, userdata, m):
        bag = m.topic.split("/messages/devicebound/", 1)[1]
        props = dict(urllib.parse.parse_qsl(bag, keep_blank_values=True))
        with self.lock:
            self.messages.append((props, m.payload))

    def ids(self):
        with self.lock:
            return [p.get("$.mid") for p, _ in self.messages]

    def close(self):
        self.device.close()


def feedback(hub):
    r = hub.call("GET", "/messages/serviceBound/feedback")
    if r.status_code == 204:
        return []
    assert r.status_code == 200, r.text
    assert hub.call("DELETE", f"/messages/serviceBound/feedback/{r.headers['iothub-lockToken']}").status_code == 204
    return [(f["deviceId"], f["originalMessageId"], f["statusCode"]) for f in r.json()]


def test_cloud_to_device_messages_reach_children_through_the_edge(tmp_path):
    hub = make_hub(tmp_path, "hub", HUB_RULES, hostname="hub.test").start()
    edge = None
    receivers = []
    try:
        e = put_device(hub, "edge1", {"capabilities": {"iotEdge": True}})
        keys = {n: put_device(hub, n, {"parentScopes": [e["deviceScope"]]})["authentication"]["symmetricKey"]["primaryKey"]
                for n in ("c1", "c2", "c3")}
        edge = start_edge(tmp_path, hub, e, EDGE_RULES, children=keys)

        # A child connected to the edge gets the message, properties and all.
        c1 = Receiver(edge, "c1", keys["c1"])
        receivers.append(c1)
        time.sleep(0.5)
        post_c2d(hub, "c1", b'{"cmd": "open"}', "m1", valve="v/7 & co")
        wait_for(lambda: c1.ids() == ["m1"], f"c1 got {c1.ids()}")
        props, body = c1.messages[0]
        assert json.loads(body) == {"cmd": "open"}
        assert props["valve"] == "v/7 & co" and props["$.to"] == "/devices/c1/messages/deviceBound", props
        assert props["$.ct"] == "application/json", props
        wait_for(lambda: hub.call("GET", "/devices/c1").json()["cloudToDeviceMessageCount"] == 0,
                 "the hub still holds c1's message")

        # Several in a row keep their order.
        for i in range(2, 7):
            post_c2d(hub, "c1", json.dumps({"i": i}).encode(), f"m{i}")
        wait_for(lambda: len(c1.ids()) == 6, f"c1 got {c1.ids()}")
        assert c1.ids() == [f"m{i}" for i in range(1, 7)]

        # A child connected nowhere: the edge takes the message from the hub and keeps it.
        post_c2d(hub, "c2", b'{"cmd": "close"}', "for-c2")
        wait_for(lambda: hub.call("GET", "/devices/c2").json()["cloudToDeviceMessageCount"] == 0,
                 "the edge did not take c2's message")
        assert edge.call("GET", "/devices/c2").json()["cloudToDeviceMessageCount"] == 1

        # Sent while the edge is away: it goes when the edge is back.
        edge.stop()
        post_c2d(hub, "c3", b'{"cmd": "later"}', "for-c3")
        time.sleep(1)
        assert hub.call("GET", "/devices/c3").json()["cloudToDeviceMessageCount"] == 1
        edge.start()
        wait_for(lambda: hub.call("GET", "/devices/c3").json()["cloudToDeviceMessageCount"] == 0,
                 "the edge did not take c3's message once back", timeout=30)

        # The hub is gone; children connecting to the edge get what the edge holds.
        hub.stop()
        c2 = Receiver(edge, "c2", keys["c2"])
        c3 = Receiver(edge, "c3", keys["c3"])
        receivers += [c2, c3]
        wait_for(lambda: c2.ids() == ["for-c2"] and c3.ids() == ["for-c3"], f"{c2.ids()} {c3.ids()}")
        assert json.loads(c2.messages[0][1]) == {"cmd": "close"}
        hub.start()
        time.sleep(1)
        # Each was delivered once, and the hub reports every one as delivered.
        assert c1.ids() == [f"m{i}" for i in range(1, 7)] and c2.ids() == ["for-c2"] and c3.ids() == ["for-c3"]
        got = feedback(hub)
        assert sorted(got) == sorted([("c1", f"m{i}", "Success") for i in range(1, 7)]
                                     + [("c2", "for-c2", "Success"), ("c3", "for-c3", "Success")]), got
    finally:
        shut_down(receivers, edge, hub)
