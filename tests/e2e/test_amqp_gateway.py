"""The AMQP gateway against a real RabbitMQ, fed by pika: device messages with SAS headers
are archived exactly once with their properties, even when RabbitMQ restarts while Weir
consumes; routes see `$weirGateway`; refused messages reach the dead-letter exchange with
the reason and without the token; a trusted `user_id` names the device."""

import json
import time
import uuid

import pika

from test_amqp_sink import rabbit, rabbitmqctl
from weirhub import Hub

RULES = """
[[endpoint]]
name = "archive"
type = "parquet"

[[endpoint]]
name = "viaamqp"
type = "parquet"

[[route]]
name = "everything"
condition = "true"
endpoints = ["archive"]

[[route]]
name = "amqp-only"
condition = "$weirGateway = 'amqp'"
endpoints = ["viaamqp"]
"""


def setup_broker():
    name = f"weir.gw.{uuid.uuid4().hex[:8]}"
    conn = rabbit()
    ch = conn.channel()
    ch.queue_declare(name, durable=True)
    ch.exchange_declare(name + ".dlx", "topic", durable=True)
    ch.queue_declare(name + ".dlx", durable=True)
    ch.queue_bind(name + ".dlx", name + ".dlx", "#")
    conn.close()
    return name


def teardown_broker(name):
    conn = rabbit()
    ch = conn.channel()
    for q in (name, name + ".dlx"):
        ch.queue_delete(q)
    ch.exchange_delete(name + ".dlx")
    conn.close()


def start(tmp_path, queue, trust=False):
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "rules.toml").write_text(RULES)
    config = (f'[amqp]\nurl = "amqp://guest:guest@127.0.0.1:5672/%2f"\nqueues = ["{queue}"]\n'
              f'dead_letter_exchange = "{queue}.dlx"\nprefetch = 500\n'
              f'trust_user_id = {"true" if trust else "false"}\n')
    return Hub(tmp_path, rules, config=config).start()


def publisher():
    conn = rabbit()
    ch = conn.channel()
    ch.confirm_delivery()
    return conn, ch


def publish(ch, queue, body, headers=None, message_id=None, user_id=None, content_type="application/json"):
    ch.basic_publish("", queue, body, pika.BasicProperties(
        delivery_mode=2, headers=headers, message_id=message_id, user_id=user_id, content_type=content_type))


def test_ten_thousand_messages_are_archived_once_across_a_broker_restart(tmp_path):
    queue = setup_broker()
    hub = start(tmp_path, queue)
    try:
        keys = {d: hub.create_device(d)["authentication"]["symmetricKey"]["primaryKey"] for d in ("gw-a", "gw-b")}
        tokens = {d: hub.device_token(d, k) for d, k in keys.items()}
        # A backlog: Weir is stopped while the messages are published, so the restart
        # below lands in the middle of consuming them.
        hub.stop()
        conn, ch = publisher()
        for i in range(10000):
            d = "gw-a" if i % 2 else "gw-b"
            publish(ch, queue, json.dumps({"temp": 20 + i % 20, "i": i}).encode(),
                    headers={"authorization": tokens[d], "kind": f"k{i % 3}", "n": i}, message_id=f"m{i}")
        conn.close()
        hub.start()
        # Restart RabbitMQ while Weir is consuming: what Weir had not acknowledged is
        # delivered again, and dropped as a repeat by its message id.
        deadline = time.time() + 30
        while hub.metric("weir_gateway_messages_total", protocol="amqp") < 2000 and time.time() < deadline:
            time.sleep(0.05)
        consumed = hub.metric("weir_gateway_messages_total", protocol="amqp")
        rabbitmqctl("stop_app")
        rabbitmqctl("start_app")
        rabbitmqctl("await_startup")
        assert 2000 <= consumed < 10000, f"the restart came after {consumed} messages"
        hub.wait_rows("archive", 10000, timeout=120)
        time.sleep(2)
        rows = hub.query("archive", "SELECT count(*), count(DISTINCT message_id), min(properties['kind']), "
                                    "count(*) FILTER (WHERE properties['n'] IS NOT NULL) FROM t")
        assert rows == [(10000, 10000, "k0", 10000)], rows
        sample = hub.query("archive", "SELECT device_id, body, content_type, properties['n'] FROM t "
                                      "WHERE message_id = 'm7'")
        assert sample == [("gw-a", json.dumps({"temp": 27, "i": 7}), "application/json", "7")]
        assert hub.query("archive", "SELECT count(*) FROM t WHERE properties['authorization'] IS NOT NULL") == [(0,)]
        hub.wait_rows("viaamqp", 10000, timeout=60)
        assert hub.metric("weir_gateway_protocol_errors_total", protocol="amqp") == 0
        conn = rabbit()
        assert conn.channel().queue_declare(queue, passive=True).method.message_count == 0
        conn.close()
    finally:
        hub.stop()
        teardown_broker(queue)


def test_refused_messages_go_to_the_dead_letter_exchange_with_the_reason(tmp_path):
    queue = setup_broker()
    hub = start(tmp_path, queue, trust=True)
    try:
        key = hub.create_device("gw-ok")["authentication"]["symmetricKey"]["primaryKey"]
        hub.create_device("gw-off", status="disabled")
        off_key = hub.call("GET", "/devices/gw-off").json()["authentication"]["symmetricKey"]["primaryKey"]
        hub.create_device("guest")  # RabbitMQ's own user: its validated user_id names it
        conn, ch = publisher()
        publish(ch, queue, b'{"ok": 1}', headers={"authorization": hub.device_token("gw-ok", key)}, message_id="good")
        publish(ch, queue, b'{"bad": 1}', headers={"authorization": hub.device_token("gw-ok", off_key)}, message_id="bad-sig")
        publish(ch, queue, b'{"bad": 2}', headers={"authorization": hub.device_token("gw-off", off_key)}, message_id="disabled")
        publish(ch, queue, b'{"bad": 3}', headers={"authorization": hub.device_token("ghost", key)}, message_id="unknown")
        publish(ch, queue, b'{"bad": 4}', headers={"kind": "x"}, message_id="anonymous")
        publish(ch, queue, b'{"ok": 2}', message_id="trusted", user_id="guest")
        conn.close()
        hub.wait_rows("archive", 2)
        rows = hub.query("archive", "SELECT message_id, device_id FROM t ORDER BY message_id")
        assert rows == [("good", "gw-ok"), ("trusted", "guest")]
        methods = hub.query("viaamqp", "SELECT message_id FROM t ORDER BY message_id")
        assert methods == [("good",), ("trusted",)]
        got = {}
        conn = rabbit()
        c = conn.channel()
        deadline = time.time() + 20
        while len(got) < 4 and time.time() < deadline:
            m, p, body = c.basic_get(queue + ".dlx", auto_ack=True)
            if m is None:
                time.sleep(0.1)
                continue
            assert "authorization" not in (p.headers or {}), "the token does not travel on"
            got[p.message_id] = p.headers["weir-refused-reason"]
        conn.close()
        assert set(got) == {"bad-sig", "disabled", "unknown", "anonymous"}, got
        assert "signature" in got["bad-sig"]
        assert "disabled" in got["disabled"]
        assert "not registered" in got["unknown"]
        assert "authorization" in got["anonymous"]
        assert hub.metric("weir_gateway_protocol_errors_total", protocol="amqp") == 4
        assert hub.wait_log("AMQP message refused")
        assert key not in hub.log_text() and "sig=" not in hub.log_text()
    finally:
        hub.stop()
        teardown_broker(queue)
