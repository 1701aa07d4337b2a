"""Device context in routes: route conditions and enrichments that read `$twin.tags` see the
tags a device had when its message entered the log, not the registry's current ones, also
when a kill -9 makes the hub route the log again and when a failed endpoint's messages are
replayed from the log."""

import signal
import time

from rawmqtt import Raw
from sinkdevice import rules_dir, send
from test_webhook_sink import SECRET, Receiver
from weirhub import Hub

RULES = """
[[endpoint]]
name = "site_a"
type = "parquet"

[[endpoint]]
name = "site_b"
type = "parquet"

[[endpoint]]
name = "hook"
type = "webhook"
url = "http://127.0.0.1:{hook}/hooks"
secret = "{secret}"
max_delay_ms = 50

[[endpoint]]
name = "changes"
type = "webhook"
url = "http://127.0.0.1:{changes}/changes"
secret = "{secret}"
max_delay_ms = 20

[[route]]
name = "a"
condition = "$twin.tags.site = 'A'"
endpoints = ["site_a"]

[[route]]
name = "b"
condition = "$twin.tags.site = 'B'"
endpoints = ["site_b"]

[[route]]
name = "everything"
condition = "true"
endpoints = ["hook"]

[[route]]
name = "changes"
source = "TwinChangeEvents"
condition = "true"
endpoints = ["changes"]

[[enrichment]]
key = "site"
value = "$twin.tags.site"
endpoints = ["site_a", "site_b", "hook"]
"""


def move(hub, changes, device, site, seen):
    """Sets the device's site and waits until the change is in the log (its event reached
    the `changes` webhook), so what is sent afterwards is behind it in the log."""
    r = hub.call("PATCH", f"/twins/{device}", {"tags": {"site": site}})
    assert r.status_code == 200, r.text
    got = {l["messageId"] for l in changes.wait(seen + 1, timeout=20)}
    assert len(got) == seen + 1, f"the tag change to {site} never reached the log"
    return seen + 1


def rows(hub, endpoint):
    return sorted(hub.query(endpoint, "SELECT message_id, properties['site'] FROM t"))


def connect(hub, key):
    r = Raw(hub.mqtt_port, timeout=10)
    assert r.connect("mover", hub.username("mover"), hub.device_token("mover", key)) == 0
    return r


def set_archive_age(hub, secs):
    text = hub.config_path.read_text()
    start = text.index("max_age_secs = ")
    end = text.index("\n", start)
    hub.config_path.write_text(text[:start] + f"max_age_secs = {secs}" + text[end:])


def test_routes_and_enrichments_read_the_tags_of_the_messages_position(tmp_path):
    hook = Receiver()
    changes = Receiver()
    d = rules_dir(tmp_path, RULES.format(hook=hook.port, changes=changes.port, secret=SECRET))
    # No duplicate window: a restart reads the log from exactly where every endpoint had
    # committed, so what came before (the device's creation at site A) is not read again.
    hub = Hub(tmp_path, d, config="[archive]\nmax_age_secs = 0.3\n[dedupe]\nwindow_secs = 0\n").start()
    try:
        key = hub.create_device("mover", tags={"site": "A"})["authentication"]["symmetricKey"]["primaryKey"]
        r = connect(hub, key)
        for i in range(10):
            send(r, "mover", i, 20)
        r.close()
        hub.wait_rows("site_a", 10, timeout=30)
        assert len({l["messageId"] for l in hook.wait(10)}) == 10
        hub.stop()

        # Nothing reaches a Parquet file before the kill, and the webhook fails from now
        # on: after the kill, the Parquet endpoints route the log again and the webhook's
        # messages come from a replay of it.
        set_archive_age(hub, 3600)
        hub.start()
        with hook.lock:
            hook.fail_until = time.time() + 10_000
        seen = 0
        r = connect(hub, key)
        for i in range(10, 30):
            send(r, "mover", i, 20)
        seen = move(hub, changes, "mover", "B", seen)
        for i in range(30, 60):
            send(r, "mover", i, 20)
        r.close()

        # The registry says B now, and the log read again no longer holds the creation:
        # only the log after it knows which messages were sent at A.
        hub.stop(sig=signal.SIGKILL)
        set_archive_age(hub, 0.3)
        hub.start()
        hub.wait_rows("site_a", 30, timeout=60)
        hub.wait_rows("site_b", 30, timeout=60)
        time.sleep(1)
        want_a = [(f"m{i}", "A") for i in range(30)]
        want_b = [(f"m{i}", "B") for i in range(30, 60)]
        assert rows(hub, "site_a") == sorted(want_a)
        assert rows(hub, "site_b") == sorted(want_b)

        hub.wait_endpoint("hook", "unhealthy", timeout=30)
        with hook.lock:
            hook.fail_until = 0
        hub.wait_endpoint("hook", "healthy", timeout=60)
        lines = hook.wait(60, timeout=30)
        got = sorted({(l["messageId"], l["properties"].get("site")) for l in lines})
        assert got == sorted(want_a + want_b), got

        # Live, without a restart: a move to C is seen from the next message on.
        r = connect(hub, key)
        seen = move(hub, changes, "mover", "C", seen)
        for i in range(60, 70):
            send(r, "mover", i, 20)
        r.close()
        lines = hook.wait(70, timeout=30)
        late = sorted({(l["messageId"], l["properties"].get("site")) for l in lines} - set(got))
        assert late == sorted((f"m{i}", "C") for i in range(60, 70)), late
        assert hub.query("site_a", "SELECT count(*) FROM t")[0][0] == 30
        assert hub.query("site_b", "SELECT count(*) FROM t")[0][0] == 30
    finally:
        hub.stop()
        hook.close()
        changes.close()
