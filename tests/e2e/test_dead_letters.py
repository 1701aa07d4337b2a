"""Dead letters: an endpoint that keeps failing hands what it could not deliver within
`max_retry_secs` to its `dead_letter` endpoint, marked with why, and commits past it; once
it works again it gets what is new. A webhook that answers 500 dead-letters into Parquet,
a Parquet archive that cannot write dead-letters into a webhook."""

import datetime
import time

from sinkdevice import device, rules_dir, send
from test_webhook_sink import SECRET, Receiver
from weirhub import Hub


def ids(n, start=0):
    return {f"m{i}" for i in range(start, start + n)}


def send_until_healthy(hub, r, device_id, endpoint, start, temp):
    """An endpoint is healthy again once it has written something after its retry; what is
    sent while it still backs off may be dead-lettered first, so keep sending until a write
    proves it. Returns the id after the last one sent."""
    sent = start
    deadline = time.time() + 60
    while hub.endpoint(endpoint)["state"] != "healthy":
        assert time.time() < deadline, f"{endpoint} never became healthy: {hub.endpoint(endpoint)}"
        send(r, device_id, sent, temp)
        sent += 1
        time.sleep(0.5)
    return sent


def test_a_webhook_that_keeps_failing_dead_letters_into_parquet(tmp_path):
    rx = Receiver(fail_for=10_000)
    d = rules_dir(tmp_path, f"""
[[endpoint]]
name = "tickets"
type = "webhook"
url = "http://127.0.0.1:{rx.port}/hooks"
secret = "{SECRET}"
max_delay_ms = 50
dead_letter = "dlq"
max_retry_secs = 2

[[endpoint]]
name = "dlq"
type = "parquet"

[[route]]
name = "hot"
condition = "$body.temp > 30"
endpoints = ["tickets"]
""")
    hub = Hub(tmp_path, d, config="[archive]\nmax_age_secs = 0.3\n").start()
    try:
        r = device(hub, "dl-1")
        for i in range(200):
            send(r, "dl-1", i, 40)
        hub.wait_rows("dlq", 200, timeout=60)
        rows = hub.query("dlq", """
            SELECT message_id, body, properties['kind'],
                   properties['weir-dead-letter-reason'], properties['weir-dead-letter-endpoint'],
                   properties['weir-dead-letter-route'], properties['weir-dead-letter-offset'],
                   epoch_ms(enqueued_time) - epoch_ms(CAST(properties['weir-dead-letter-enqueued-time'] AS TIMESTAMP))
            FROM t""")
        assert {r[0] for r in rows} == ids(200) and len(rows) == 200, "each message once"
        for mid, body, kind, reason, origin, origin_route, offset, waited in rows:
            assert origin == "tickets" and origin_route == "hot" and '"temp": 40' in body
            assert "500" in reason, reason
            assert kind in ("k0", "k1") and int(offset) >= 0
            assert waited >= 2000, f"{mid} was handed on after {waited} ms, before max_retry_secs"
        assert rx.lines == [] and rx.failed > 0
        e = hub.endpoint("tickets")
        # Unhealthy, or degraded between a retry that had nothing left to send and the
        # next failure: never healthy while the receiver fails.
        assert e["state"] in ("unhealthy", "degraded") and e["deadLetter"] == "dlq", e
        assert e["deadLettered"] == 200, e
        assert hub.metric("weir_endpoint_dead_lettered_total", endpoint="tickets") == 200

        # The receiver comes back: what is new is delivered, nothing twice, nothing lost.
        with rx.lock:
            rx.fail_for = 0
            rx.fail_until = 0
        sent = send_until_healthy(hub, r, "dl-1", "tickets", 200, 40)
        r.close()
        time.sleep(3)
        hooked = [l["messageId"] for l in rx.wait(0)]
        dead = [row[0] for row in hub.query("dlq", "SELECT message_id FROM t") if row[0] not in ids(200)]
        assert hooked, "nothing reached the webhook after it came back"
        assert sorted(hooked + dead) == sorted(ids(sent - 200, 200)), (hooked, dead)
        assert not set(hooked) & ids(200), "a dead-lettered message is not delivered again"
    finally:
        hub.stop()
        rx.close()


def test_a_parquet_archive_that_cannot_write_dead_letters_into_a_webhook(tmp_path):
    rx = Receiver()
    d = rules_dir(tmp_path, f"""
[[endpoint]]
name = "archive"
type = "parquet"
dead_letter = "tickets"
max_retry_secs = 1

[[endpoint]]
name = "tickets"
type = "webhook"
url = "http://127.0.0.1:{rx.port}/hooks"
secret = "{SECRET}"
max_delay_ms = 50

[[route]]
name = "all"
condition = "true"
endpoints = ["archive"]
""")
    hub = Hub(tmp_path, d, config="[archive]\nmax_age_secs = 0.3\n").start()
    # Regular files where today's and tomorrow's partition directories belong.
    root = hub.data / "archive" / "archive"
    root.mkdir(parents=True, exist_ok=True)
    today = datetime.datetime.now(datetime.timezone.utc).date()
    blockers = [root / f"date={today + datetime.timedelta(days=k)}" for k in (0, 1)]
    for b in blockers:
        b.write_text("in the way")
    try:
        r = device(hub, "dl-2")
        for i in range(100):
            send(r, "dl-2", i, 20)
        lines = rx.wait(100, timeout=60)
        assert {l["messageId"] for l in lines} == ids(100) and len(lines) == 100
        l = lines[0]
        assert l["route"] == "$deadLetter" and l["deviceId"] == "dl-2"
        p = l["properties"]
        assert p["weir-dead-letter-endpoint"] == "archive" and p["weir-dead-letter-route"] == "all"
        assert "date=" in p["weir-dead-letter-reason"], p
        assert p["kind"] in ("k0", "k1") and l["body"]["temp"] == 20
        assert rx.bad_signatures == 0
        assert hub.endpoint("archive")["deadLettered"] == 100

        for b in blockers:
            b.unlink()
        sent = send_until_healthy(hub, r, "dl-2", "archive", 100, 20)
        r.close()
        time.sleep(3)
        archived = [row[0] for row in hub.query("archive", "SELECT message_id FROM t")]
        handed = [l["messageId"] for l in rx.wait(0)][100:]
        assert archived, "nothing reached the archive after it came back"
        assert sorted(archived + handed) == sorted(ids(sent - 100, 100)), (archived, handed)
    finally:
        hub.stop()
        rx.close()


def test_without_a_dead_letter_endpoint_the_log_keeps_everything(tmp_path):
    """The default: a failing endpoint hands nothing on, however long it fails, and gets
    it all once it works (covered in depth by test_webhook_sink; here only that nothing is
    counted as dead-lettered)."""
    rx = Receiver(fail_for=3.0)
    d = rules_dir(tmp_path, f"""
[[endpoint]]
name = "tickets"
type = "webhook"
url = "http://127.0.0.1:{rx.port}/hooks"
secret = "{SECRET}"
max_delay_ms = 50

[[route]]
name = "all"
condition = "true"
endpoints = ["tickets"]
""")
    hub = Hub(tmp_path, d).start()
    try:
        r = device(hub, "dl-3")
        for i in range(50):
            send(r, "dl-3", i, 20)
        r.close()
        lines = rx.wait(50, timeout=60)
        assert {l["messageId"] for l in lines} == ids(50)
        e = hub.endpoint("tickets")
        assert e["deadLettered"] == 0 and e["deadLetter"] is None, e
    finally:
        hub.stop()
        rx.close()
