"""`type = "amqp"` endpoints against a real RabbitMQ, read back with pika: every routed
message arrives with its routing key, properties and headers; RabbitMQ restarted in the
middle loses nothing a device was acknowledged for (repeats carry the same
`weir-ingest-offset`); a missing queue binding is an unhealthy endpoint, not a silent
drop; bad options are refused by `weir rules check` with the line."""

import json
import subprocess
import time
import uuid

import pika
import pytest

from conftest import run_weir
from sinkdevice import device, send as _send
from weirhub import Hub

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/%2f"


def rabbit():
    try:
        return pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", 5672, connection_attempts=1))
    except pika.exceptions.AMQPConnectionError as e:
        raise AssertionError(
            "RabbitMQ is not running on 127.0.0.1:5672; scripts/test starts it "
            "(apt-get install -y rabbitmq-server; rabbitmq-server -detached)") from e


def rabbitmqctl(*args):
    r = subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


@pytest.fixture
def broker():
    """A fresh exchange and a queue bound to everything on it; deleted afterwards."""
    name = f"weir.test.{uuid.uuid4().hex[:8]}"
    conn = rabbit()
    ch = conn.channel()
    ch.exchange_declare(name, "topic", durable=True)
    ch.queue_declare(name, durable=True)
    ch.queue_bind(name, name, "#")
    conn.close()
    yield name
    conn = rabbit()
    ch = conn.channel()
    ch.queue_delete(name)
    ch.exchange_delete(name)
    conn.close()


def rules(exchange):
    return f"""
[[endpoint]]
name = "archive"
type = "parquet"

[[endpoint]]
name = "alerts"
type = "amqp"
url = "{AMQP_URL}"
exchange = "{exchange}"
routing_key = "{{route}}.{{deviceId}}.{{app.kind}}"

[[route]]
name = "everything"
condition = "true"
endpoints = ["archive"]

[[route]]
name = "hot"
condition = "$body.temp > 30"
endpoints = ["alerts"]

[[enrichment]]
key = "site"
value = "plant-7"
endpoints = ["alerts"]
"""


def drain(queue, want, timeout=60):
    """Every message in `queue` until `want` distinct message ids have arrived."""
    got = []
    conn = rabbit()
    ch = conn.channel()
    deadline = time.time() + timeout
    seen = set()
    while time.time() < deadline and len(seen) < want:
        method, props, body = ch.basic_get(queue, auto_ack=True)
        if method is None:
            time.sleep(0.05)
            continue
        got.append((method, props, body))
        seen.add(props.message_id)
    conn.close()
    return got


def start(tmp_path, exchange):
    d = tmp_path / "rules"
    d.mkdir()
    (d / "rules.toml").write_text(rules(exchange))
    return Hub(tmp_path, d).start()


def send(r, dev, i, temp):
    _send(r, dev, i, temp, kinds=3, extra="&%24.ct=application%2Fjson")


def test_routed_messages_reach_rabbitmq_with_keys_properties_and_headers(tmp_path, broker):
    hub = start(tmp_path, broker)
    try:
        r = device(hub, "amqp-1")
        for i in range(1000):
            send(r, "amqp-1", i, 35 if i % 2 else 20)
        r.close()
        got = drain(broker, 500)
        ids = [p.message_id for _, p, _ in got]
        assert sorted(set(ids)) == sorted(f"m{i}" for i in range(1, 1000, 2)), "every hot message, no cold one"
        assert len(ids) == 500, "no repeats without a failure"
        for method, props, body in got:
            i = int(props.message_id[1:])
            assert method.routing_key == f"hot.amqp-1.k{i % 3}"
            assert json.loads(body) == {"temp": 35, "i": i}, "the body unchanged"
            assert props.content_type == "application/json"
            assert props.delivery_mode == 2
            h = props.headers
            assert h["kind"] == f"k{i % 3}" and h["site"] == "plant-7"
            assert h["iothub-connection-device-id"] == "amqp-1"
            assert h["iothub-message-source"] == "Telemetry"
            assert h["iothub-enqueuedtime"].endswith("Z")
            assert h["weir-route"] == "hot"
            assert isinstance(h["weir-ingest-offset"], int)
        offsets = [p.headers["weir-ingest-offset"] for _, p, _ in got]
        assert len(set(offsets)) == 500
        hub.wait_rows("archive", 1000)
        assert hub.endpoint("alerts")["state"] == "healthy"
    finally:
        hub.stop()


def test_a_broker_restart_loses_nothing_acknowledged(tmp_path, broker):
    hub = start(tmp_path, broker)
    try:
        r = device(hub, "amqp-2")
        for i in range(600):
            send(r, "amqp-2", i, 40)
        rabbitmqctl("stop_app")
        try:
            # The device is still acknowledged: its messages are in Weir's log.
            for i in range(600, 1200):
                send(r, "amqp-2", i, 40)
            hub.wait_endpoint("alerts", "unhealthy", timeout=40)
        finally:
            rabbitmqctl("start_app")
            rabbitmqctl("await_startup")
        for i in range(1200, 1500):
            send(r, "amqp-2", i, 40)
        r.close()
        got = drain(broker, 1500, timeout=90)
        ids = {p.message_id for _, p, _ in got}
        missing = sorted({f"m{i}" for i in range(1500)} - ids, key=lambda m: int(m[1:]))
        assert not missing, f"{len(missing)} acknowledged messages never reached RabbitMQ: {missing[:5]}"
        # Repeats are allowed (at least once) and recognisable: same offset, same body.
        by_offset = {}
        for _, p, body in got:
            by_offset.setdefault(p.headers["weir-ingest-offset"], set()).add((p.message_id, body))
        assert all(len(v) == 1 for v in by_offset.values()), "one offset, one message"
        hub.wait_endpoint("alerts", "healthy", timeout=60)
        hub.wait_rows("archive", 1500)
    finally:
        hub.stop()


def test_a_killed_hub_publishes_what_it_acknowledged_after_restart(tmp_path, broker):
    import signal
    hub = start(tmp_path, broker)
    try:
        r = device(hub, "amqp-4")
        for i in range(1500):
            send(r, "amqp-4", i, 40)
        r.close()
        hub.stop(sig=signal.SIGKILL)
        hub.start()
        got = drain(broker, 1500, timeout=90)
        ids = {p.message_id for _, p, _ in got}
        assert ids == {f"m{i}" for i in range(1500)}
        offsets = {}
        for _, p, _ in got:
            offsets.setdefault(p.headers["weir-ingest-offset"], set()).add(p.message_id)
        assert all(len(v) == 1 for v in offsets.values()), "a repeat carries its original offset"
    finally:
        hub.stop()


def test_an_unbound_exchange_makes_the_endpoint_unhealthy_until_a_queue_is_bound(tmp_path):
    exchange = f"weir.test.{uuid.uuid4().hex[:8]}"
    hub = start(tmp_path, exchange)
    try:
        r = device(hub, "amqp-3")
        for i in range(20):
            send(r, "amqp-3", i, 40)
        state = hub.wait_endpoint("alerts", "unhealthy", timeout=30)
        assert "no queue bound" in (state["lastError"] or ""), state
        conn = rabbit()
        ch = conn.channel()
        ch.queue_declare(exchange, durable=True)
        ch.queue_bind(exchange, exchange, "#")
        conn.close()
        got = drain(exchange, 20, timeout=60)
        assert {p.message_id for _, p, _ in got} == {f"m{i}" for i in range(20)}
        r.close()
    finally:
        hub.stop()
        conn = rabbit()
        ch = conn.channel()
        ch.queue_delete(exchange)
        ch.exchange_delete(exchange)
        conn.close()


def test_rules_check_refuses_bad_amqp_options(tmp_path):
    d = tmp_path / "rules"
    d.mkdir()
    (d / "bad.toml").write_text(
        '[[endpoint]]\nname = "q"\ntype = "amqp"\nurl = "http://nope"\nexchange = "x"\n'
        '[[route]]\nname = "r"\ncondition = "true"\nendpoints = ["q"]\n')
    r = run_weir("rules", "check", d)
    assert r.returncode != 0
    assert "bad.toml:4" in r.stderr and "not an AMQP URL" in r.stderr, r.stderr
    (d / "bad.toml").write_text(
        '[[endpoint]]\nname = "q"\ntype = "amqp"\nurl = "amqp://h"\nexchange = "x"\nrouting_key = "{devce}"\n'
        '[[route]]\nname = "r"\ncondition = "true"\nendpoints = ["q"]\n')
    r = run_weir("rules", "check", d)
    assert r.returncode != 0
    assert "bad.toml:6" in r.stderr and "unknown placeholder {devce}" in r.stderr, r.stderr
