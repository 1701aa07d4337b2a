"""What the edge tests share: a hub and an edge (`[upstream]`) on loopback, a TCP proxy
the tests cut, children publishing numbered messages."""

import json
import select
import socket
import threading
import time

from rawmqtt import Raw
from sinkdevice import rules_dir
from weirhub import Hub

HUB_RULES = """
[[endpoint]]
name = "archive"
type = "parquet"

[[route]]
name = "all"
condition = "true"
endpoints = ["archive"]
"""

EDGE_RULES = """
[[endpoint]]
name = "hub"
type = "upstream"

[[endpoint]]
name = "local"
type = "parquet"

[[route]]
name = "forward"
condition = "true"
endpoints = ["hub", "local"]
"""


class Proxy:
    """A TCP proxy to `target` whose mode the test changes: "pass" forwards, "acks-lost"
    forwards only towards the target (the hub gets messages, the edge no PUBACKs),
    "blackhole" keeps connections open and drops every byte both ways, "closed" closes
    every connection and every new one at once."""

    def __init__(self, target_port):
        self.target = ("127.0.0.1", target_port)
        self.mode = "pass"
        self.lock = threading.Lock()
        self.conns = []
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.accepted = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def set(self, mode):
        with self.lock:
            self.mode = mode
            if mode == "closed":
                for a, b in self.conns:
                    for s in (a, b):
                        try:
                            s.close()
                        except OSError:
                            pass
                self.conns = []

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                if self.mode == "closed":
                    client.close()
                    continue
                self.accepted += 1
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.conns.append((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, a, b):
        peer = {a: b, b: a}
        forward = {a: ("pass", "acks-lost"), b: ("pass",)}
        try:
            while True:
                ready, _, _ = select.select([a, b], [], [], 0.2)
                for s in ready:
                    data = s.recv(65536)
                    if not data:
                        raise OSError("closed")
                    if self.mode in forward[s]:
                        peer[s].sendall(data)
        except (OSError, ValueError):
            for s in (a, b):
                try:
                    s.close()
                except OSError:
                    pass

    def close(self):
        self.set("closed")
        self.listener.close()


class Child:
    """A child device connected to the edge, publishing numbered messages in a thread and
    remembering which the edge acknowledged."""

    def __init__(self, edge, name, key):
        self.edge, self.name, self.key = edge, name, key
        self.acked = []
        self.stop = threading.Event()
        self.errors = []
        self.raw = self._connect()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _connect(self):
        r = Raw(self.edge.mqtt_port, timeout=10)
        token = self.edge.device_token(self.name, self.key)
        assert r.connect(self.name, self.edge.username(self.name), token) == 0
        return r

    def _run(self):
        i = 0
        while not self.stop.is_set():
            topic = f"devices/{self.name}/messages/events/%24.mid={self.name}-{i}&seq={i}"
            body = json.dumps({"i": i, "device": self.name}).encode()
            try:
                assert self.raw.publish(topic, body, pkid=i % 60000 + 1) == i % 60000 + 1
            except Exception as e:  # noqa: BLE001 - reported by the test
                self.errors.append(repr(e))
                return
            self.acked.append(i)
            i += 1
            time.sleep(0.005)

    def finish(self):
        self.stop.set()
        self.thread.join(10)
        self.raw.close()


def wait_for(check, what, timeout=15):
    deadline = time.time() + timeout
    while not check():
        assert time.time() < deadline, what
        time.sleep(0.1)


def make_hub(tmp_path, name, rules_text, **kw):
    """A hub in its own directory under `tmp_path`."""
    work = tmp_path / name
    work.mkdir()
    return Hub(work, rules_dir(work, rules_text), **kw)


def start_edge(tmp_path, hub, edge_doc, rules, port=None, settings="", tail="", name="edge", children=()):
    """An edge of `hub` as the IoT Edge device `edge_doc` (its SAS key unless `settings`
    names another credential), dialling `port` (default: the hub's MQTT/TLS), once it has
    its `children`."""
    credential = "" if "cert =" in settings else f'key = "{edge_doc["authentication"]["symmetricKey"]["primaryKey"]}"'
    config = f"""
[upstream]
hub = "hub.test"
device_id = "{edge_doc["deviceId"]}"
{credential}
address = "127.0.0.1:{port or hub.mqtts_port}"
ca = "{hub.ca}"
{settings}
{tail}"""
    edge = make_hub(tmp_path, name, rules, hostname="edge.test", config=config).start()
    wait_for(lambda: all(edge.call("GET", f"/devices/{n}").status_code == 200 for n in children),
             "the edge did not get its children\n" + edge.log_text()[-3000:])
    return edge


def shut_down(clients, edge, hub):
    """Closes the test's clients (whatever state they are in), then the edge and the hub."""
    for c in clients:
        try:
            c.close()
        except Exception:  # noqa: BLE001 - cleanup
            pass
    if edge:
        edge.stop()
    hub.stop()


def put_device(hub, device_id, body):
    r = hub.call("PUT", f"/devices/{device_id}", {"deviceId": device_id, **body})
    assert r.status_code == 200, r.text
    return r.json()
