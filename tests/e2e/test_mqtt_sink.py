"""`type = "mqtt"` endpoints publishing to a mosquitto started by the test, read by a paho
subscriber: every routed message arrives on its templated topic with its body; a broker
that is down makes the endpoint unhealthy and, once back, it gets what it missed; bad
options are refused by `weir rules check`."""

import json
import socket
import subprocess
import threading
import time

import paho.mqtt.client as mqtt

from conftest import run_weir
from sinkdevice import device, rules_dir, send
from weirhub import Hub, free_port


def mosquitto(tmp_path, port, extra="", wait_for=None):
    """A mosquitto on `port` (plus the listeners in `extra`), once `wait_for` (default
    `port`) accepts connections."""
    conf = tmp_path / f"mosquitto-{port}.conf"
    # Persistence, so the subscriber's session (and what is queued for it) survives a
    # clean restart of the broker.
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\nuser root\n"
                    f"persistence true\npersistence_location {tmp_path}/\nlog_dest none\n"
                    "max_inflight_messages 1000\nmax_queued_messages 100000\n" + extra)
    p = subprocess.Popen(["mosquitto", "-c", str(conf)])
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", wait_for or port), timeout=0.2).close()
            return p
        except OSError:
            time.sleep(0.05)
    p.kill()
    raise AssertionError("mosquitto did not start")


class Subscriber:
    """A persistent-session paho subscriber on `weir/#` that reconnects by itself."""

    def __init__(self, port):
        self.got = []
        self.lock = threading.Lock()
        self.ready = threading.Event()
        self.c = mqtt.Client(client_id="weir-test-sub", clean_session=False, protocol=mqtt.MQTTv311)
        self.c.on_connect = lambda c, u, f, rc: (c.subscribe("weir/#", qos=1), self.ready.set())
        self.c.on_message = self._msg
        self.c.reconnect_delay_set(min_delay=0.2, max_delay=1)
        self.c.connect("127.0.0.1", port, keepalive=30)
        self.c.loop_start()
        assert self.ready.wait(10)
        time.sleep(0.3)

    def _msg(self, c, u, m):
        with self.lock:
            self.got.append((m.topic, m.payload))

    def wait(self, n, timeout=30):
        deadline = time.time() + timeout
        while time.time() < deadline:
            with self.lock:
                if len({p for _, p in self.got}) >= n:
                    return list(self.got)
            time.sleep(0.05)
        with self.lock:
            return list(self.got)

    def close(self):
        self.c.loop_stop()
        self.c.disconnect()


def start(tmp_path, port):
    d = rules_dir(tmp_path, f"""
[[endpoint]]
name = "line"
type = "mqtt"
url = "mqtt://127.0.0.1:{port}"
topic = "weir/{{route}}/{{deviceId}}/{{app.kind}}"

[[route]]
name = "hot"
condition = "$body.temp > 30"
endpoints = ["line"]
""")
    return Hub(tmp_path, d).start()


def test_routed_messages_reach_an_mqtt_broker(tmp_path):
    port = free_port()
    broker = mosquitto(tmp_path, port)
    hub = start(tmp_path, port)
    sub = Subscriber(port)
    try:
        r = device(hub, "mq-1")
        for i in range(600):
            send(r, "mq-1", i, 40 if i % 3 else 10)
        r.close()
        want = {i for i in range(600) if i % 3}
        got = sub.wait(len(want))
        bodies = {json.loads(p)["i"]: t for t, p in got}
        assert set(bodies) == want, f"missing {sorted(want - set(bodies))[:5]}"
        assert all(t == f"weir/hot/mq-1/k{i % 2}" for i, t in bodies.items())
        assert hub.endpoint("line")["state"] == "healthy"
    finally:
        sub.close()
        hub.stop()
        broker.kill()


def test_a_broker_outage_is_caught_up_afterwards(tmp_path):
    port = free_port()
    broker = mosquitto(tmp_path, port)
    hub = start(tmp_path, port)
    sub = Subscriber(port)
    try:
        r = device(hub, "mq-2")
        for i in range(100):
            send(r, "mq-2", i, 40)
        assert len({p for _, p in sub.wait(100)}) == 100
        broker.terminate()
        broker.wait()
        sub.ready.clear()
        for i in range(100, 300):
            send(r, "mq-2", i, 40)
        e = hub.wait_endpoint("line", "unhealthy", timeout=30)
        assert e["lastError"], e
        broker = mosquitto(tmp_path, port)
        assert sub.ready.wait(10)
        got = sub.wait(300, timeout=60)
        ids = {json.loads(p)["i"] for _, p in got}
        assert ids == set(range(300)), f"missing {sorted(set(range(300)) - ids)[:5]}"
        hub.wait_endpoint("line", "healthy", timeout=60)
        r.close()
    finally:
        sub.close()
        hub.stop()
        broker.kill()


def test_rules_check_refuses_bad_mqtt_options(tmp_path):
    d = tmp_path / "rules"
    d.mkdir()
    (d / "bad.toml").write_text(
        '[[endpoint]]\nname = "q"\ntype = "mqtt"\nurl = "mqtt://h"\ntopic = "a/#"\n'
        '[[route]]\nname = "r"\ncondition = "true"\nendpoints = ["q"]\n')
    r = run_weir("rules", "check", d)
    assert r.returncode != 0
    assert "bad.toml:5" in r.stderr and "wildcards" in r.stderr, r.stderr
