"""Acknowledged means archived exactly once: kill -9, torn tails, overload, repeats."""

import collections
import json
import os
import random
import signal
import threading
import time

import paho.mqtt.client as mqtt
import pytest

from conftest import mount_tmpfs
from rawmqtt import Raw
from weirhub import Hub


class Publisher:
    """A paho QoS 1 publisher that records which message ids the hub acknowledged. paho
    reconnects by itself and resends unacknowledged messages with DUP set.

    paho calls `on_publish` from its own thread while holding its locks, so the callback
    only appends to a deque; the publishing thread maps packet ids to messages, draining
    acknowledgements before each publish so a reused packet id is never confused."""

    def __init__(self, hub, device_id, key):
        self.device_id, self.acked, self.sent = device_id, set(), set()
        self.pending = {}
        self.acks = collections.deque()
        self.c = mqtt.Client(client_id=device_id, clean_session=False, protocol=mqtt.MQTTv311)
        self.c.username_pw_set(hub.username(device_id), hub.device_token(device_id, key))
        self.c.tls_set(ca_certs=hub.ca)
        self.c.max_inflight_messages_set(20)
        self.c.reconnect_delay_set(min_delay=0.2, max_delay=0.5)
        self.c.on_publish = lambda client, userdata, mid: self.acks.append(mid)
        self.c.connect_async("localhost", hub.mqtts_port, keepalive=30)
        self.c.loop_start()
        self.seq = 0

    def drain(self):
        while self.acks:
            msg = self.pending.pop(self.acks.popleft(), None)
            if msg is not None:
                self.acked.add(msg)

    def publish_one(self):
        self.drain()
        msg = f"{self.device_id}-{self.seq}"
        self.seq += 1
        topic = f"devices/{self.device_id}/messages/events/%24.mid={msg}"
        info = self.c.publish(topic, json.dumps({"id": msg, "pad": "x" * 64}), qos=1)
        self.sent.add(msg)
        self.pending[info.mid] = msg

    def outstanding(self):
        self.drain()
        return len(self.pending)

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


def run_publishers(pubs, stop):
    while not stop.is_set():
        for p in pubs:
            if p.outstanding() < 200:
                p.publish_one()
        time.sleep(0.002)


def publish_until_refused(raw, device, prefix, limit, pad):
    """QoS 1 publishes of ~`pad`-byte bodies until the hub stops acknowledging (a timeout
    or a closed connection). Returns the acknowledged ids and whether it stopped."""
    acked = []
    for i in range(limit):
        body = json.dumps({"id": f"{prefix}-{i}", "pad": "z" * pad}).encode()
        try:
            raw.publish(f"devices/{device}/messages/events/", body, pkid=i % 60000 + 1)
        except (AssertionError, TimeoutError, OSError):
            return acked, True
        acked.append(f"{prefix}-{i}")
    return acked, False


def archived_ids(hub):
    return [json.loads(b)["id"] for (b,) in hub.query("archive", "SELECT body FROM t")]


def test_kill_9_at_random_moments_loses_and_duplicates_nothing(tmp_path, rules_dir):
    rnd = random.Random(int(os.environ.get("WEIR_CRASH_SEED", "7")))
    hub = Hub(tmp_path, rules_dir, config="[archive]\nmax_age_secs = 0.3\n").start()
    keys = {f"crash-{i}": hub.create_device(f"crash-{i}")["authentication"]["symmetricKey"]["primaryKey"] for i in range(4)}
    pubs = [Publisher(hub, d, k) for d, k in keys.items()]
    stop = threading.Event()
    worker = threading.Thread(target=run_publishers, args=(pubs, stop), daemon=True)
    worker.start()
    kills = 0
    try:
        for _ in range(4):
            time.sleep(rnd.uniform(0.6, 2.0))
            hub.proc.kill()
            hub.proc.wait(10)
            kills += 1
            time.sleep(rnd.uniform(0.0, 0.5))
            hub.start()
        time.sleep(1.5)
    finally:
        stop.set()
        worker.join(10)
    deadline = time.time() + 30
    while any(p.outstanding() for p in pubs) and time.time() < deadline:
        time.sleep(0.1)
    for p in pubs:
        p.close()
    assert hub.stop() == 0
    acked = set().union(*(p.acked for p in pubs))
    sent = set().union(*(p.sent for p in pubs))
    ids = archived_ids(hub)
    assert kills == 4 and len(acked) > 500, f"the test should exercise the hub ({len(acked)} acknowledged)"
    assert len(ids) == len(set(ids)), f"duplicates in the archive: {len(ids) - len(set(ids))}"
    missing = acked - set(ids)
    assert not missing, f"{len(missing)} acknowledged messages are not archived, e.g. {sorted(missing)[:5]}"
    assert set(ids) <= sent, "the archive holds ids that were never sent"


def test_a_torn_tail_is_cut_and_acknowledged_messages_survive(tmp_path, rules_dir):
    hub = Hub(tmp_path, rules_dir, config="[archive]\nmax_age_secs = 3600\n").start()
    key = hub.create_device("torn")["authentication"]["symmetricKey"]["primaryKey"]
    raw = Raw(hub.mqtt_port)
    assert raw.connect("torn", hub.username("torn"), hub.device_token("torn", key)) == 0
    acked = []
    for i in range(300):
        body = json.dumps({"id": f"t-{i}"}).encode()
        raw.publish("devices/torn/messages/events/", body, pkid=i % 60000 + 1)
        acked.append(f"t-{i}")
    hub.proc.kill()
    hub.proc.wait(10)
    raw.close()
    segments = sorted((hub.data / "log").glob("*.log"))
    newest = segments[-1]
    data = newest.read_bytes()
    # Power loss mid-write: part of a record, then junk the disk never finished.
    with open(newest, "ab") as f:
        f.write(data[: 16 + 7])
        f.write(os.urandom(333))
    hub.start()
    assert "cut a torn or corrupt tail" in hub.log_text()
    assert hub.stop() == 0
    ids = archived_ids(hub)
    assert sorted(ids) == sorted(acked)


def test_retransmissions_and_repeated_message_ids_are_archived_once(hub):
    key = hub.create_device("rep")["authentication"]["symmetricKey"]["primaryKey"]
    raw = Raw(hub.mqtt_port)
    assert raw.connect("rep", hub.username("rep"), hub.device_token("rep", key)) == 0
    t = "devices/rep/messages/events/"
    raw.publish(t, b'{"id": "a"}', pkid=5)
    raw.publish(t, b'{"id": "a"}', pkid=5, dup=True)       # retransmission: dropped
    raw.publish(t, b'{"id": "b"}', pkid=5, dup=True)       # DUP but another body: kept
    raw.publish(t, b'{"id": "c"}', pkid=6)
    raw.publish(t, b'{"id": "c"}', pkid=6)                 # no DUP: a new message that looks alike
    raw.publish(t + "%24.mid=m-1", b'{"id": "d"}', pkid=7)
    raw.publish(t + "%24.mid=m-1", b'{"id": "d2"}', pkid=8)  # same $.mid: dropped
    raw.close()
    hub.wait_rows("archive", 5)
    time.sleep(1)
    assert sorted(archived_ids(hub)) == ["a", "b", "c", "c", "d"]
    assert hub.metrics()["weir_engine_duplicates_total"] == 2


def test_repeats_are_recognised_across_a_crash(tmp_path, rules_dir):
    hub = Hub(tmp_path, rules_dir, config="[archive]\nmax_age_secs = 0.2\n").start()
    key = hub.create_device("again")["authentication"]["symmetricKey"]["primaryKey"]
    raw = Raw(hub.mqtt_port)
    assert raw.connect("again", hub.username("again"), hub.device_token("again", key)) == 0
    raw.publish("devices/again/messages/events/%24.mid=once", b'{"id": "once"}', pkid=1)
    hub.wait_rows("archive", 1)
    hub.proc.kill()
    hub.proc.wait(10)
    raw.close()
    hub.start()
    # The device never saw its PUBACK (say) and sends the message again.
    raw = Raw(hub.mqtt_port)
    assert raw.connect("again", hub.username("again"), hub.device_token("again", key)) == 0
    raw.publish("devices/again/messages/events/%24.mid=once", b'{"id": "once"}', pkid=1, dup=True)
    raw.close()
    assert hub.stop() == 0
    assert archived_ids(hub) == ["once"]


def test_overload_keeps_memory_bounded_and_archives_everything(tmp_path, rules_dir):
    from conftest import run_weir
    # Heavy zstd makes the sink the bottleneck.
    hub = Hub(tmp_path, rules_dir, config="[archive]\nmax_age_secs = 1\nzstd_level = 19\n").start()
    rss = []
    done = threading.Event()

    def sample():
        while not done.is_set():
            with open(f"/proc/{hub.proc.pid}/status") as f:
                rss.append(next(int(l.split()[1]) for l in f if l.startswith("VmRSS")))
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    r = run_weir(
        "simulate", "--api", hub.api, "--data-dir", hub.data, "--mqtt", f"127.0.0.1:{hub.mqtt_port}",
        "--devices", "20", "--messages", "0", "--duration", "4", "--qos", "1", "--inflight", "100", "--json",
        "--payload", '{"id": "{{device}}-{{seq}}", "temp": {{rand:10:30}}, "pad": "' + "p" * 400 + '"}',
    )
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    m = hub.metrics()
    lag = m["weir_log_records_total"] - m["weir_archive_endpoint_rows_total{endpoint=\"archive\"}"] if "weir_archive_endpoint_rows_total{endpoint=\"archive\"}" in m else m["weir_log_records_total"]
    assert lag > 10_000, f"the sink should have fallen behind (lag {lag})"
    deadline = time.time() + 120
    while time.time() < deadline:
        rows = hub.query("archive", "SELECT count(*) FROM t")
        if rows and rows[0][0] >= report["acked"]:
            break
        time.sleep(0.5)
    done.set()
    sampler.join()
    assert hub.stop() == 0
    ids = {json.loads(b)["id"] for (b,) in hub.query("archive", "SELECT body FROM t")}
    assert len(ids) == hub.query("archive", "SELECT count(*) FROM t")[0][0] >= report["acked"]
    peak_mib = max(rss) / 1024
    print(f"overload: acked {report['acked']}, archive lag at the end of publishing {lag:.0f}, peak RSS {peak_mib:.0f} MiB")
    # Measured 426-525 MiB here with 0.6-0.85 M messages behind (the zstd-19 encoders, row
    # groups, allocator); it still grows by ~200 B per message behind (README "Not yet"),
    # which this bound would catch at about twice this backlog.
    assert peak_mib < 640, f"RSS peaked at {peak_mib:.0f} MiB while the sink lagged"


def test_a_full_disk_budget_holds_publishes_and_loses_nothing(tmp_path, rules_dir):
    cfg = "[archive]\nmax_age_secs = 3600\n[log]\nsegment_mb = 1\nbudget_mb = 2\n"
    hub = Hub(tmp_path, rules_dir, config=cfg).start()
    key = hub.create_device("full")["authentication"]["symmetricKey"]["primaryKey"]
    raw = Raw(hub.mqtt_port)
    assert raw.connect("full", hub.username("full"), hub.device_token("full", key)) == 0
    raw.sock.settimeout(3)
    acked, held = publish_until_refused(raw, "full", "f", 5000, 1000)
    assert held, "with a 2 MiB budget and nothing committed, publishing must stall"
    assert hub.metrics()["weir_log_budget_holds_total"] >= 1
    assert "disk budget reached" in hub.log_text()
    raw.close()
    assert hub.stop() == 0
    got = archived_ids(hub)
    assert len(got) == len(set(got)), "duplicates"
    assert set(got) == set(acked), f"missing {sorted(set(acked) - set(got))[:10]}, extra {sorted(set(got) - set(acked))[:10]}"


def test_a_full_disk_refuses_publishes_clearly_and_loses_nothing_acknowledged(tmp_path, rules_dir):
    import shutil
    import subprocess
    small = tmp_path / "small"
    small.mkdir()
    # A real full disk: the hub's data directory on an 8 MiB tmpfs (CI runs as root).
    mount_tmpfs(small, "8m")
    try:
        cfg = "[archive]\nmax_age_secs = 3600\n[log]\nsegment_mb = 1\nbudget_mb = 1024\n"
        hub = Hub(small, rules_dir, config=cfg).start()
        key = hub.create_device("disk")["authentication"]["symmetricKey"]["primaryKey"]
        raw = Raw(hub.mqtt_port)
        assert raw.connect("disk", hub.username("disk"), hub.device_token("disk", key)) == 0
        acked, refused = publish_until_refused(raw, "disk", "d", 20000, 2000)
        raw.close()
        assert refused, "publishing must stop when the disk is full"
        assert "the disk is full" in hub.log_text()
        assert hub.metrics()["weir_log_write_errors_total"] >= 1
        hub.stop()
        # Move the data to a disk with room; the log still holds every acknowledged message.
        roomy = tmp_path / "roomy"
        roomy.mkdir()
        shutil.copytree(small / "data", roomy / "data")
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)
    hub2 = Hub(roomy, rules_dir, config="[archive]\nmax_age_secs = 0.3\n").start()
    assert hub2.stop() == 0
    got = archived_ids(hub2)
    assert len(got) == len(set(got)), "duplicates"
    assert set(got) == set(acked), f"missing {len(set(acked) - set(got))}, extra {len(set(got) - set(acked))}"


def test_after_a_full_disk_the_log_continues_on_a_fresh_segment_without_a_restart(tmp_path, rules_dir):
    import subprocess
    small = tmp_path / "small"
    small.mkdir()
    mount_tmpfs(small, "12m")
    try:
        filler = small / "filler"
        filler.write_bytes(b"\0" * (4 << 20))
        hub = Hub(small, rules_dir, config="[archive]\nmax_age_secs = 0.3\n[log]\nsegment_mb = 1\nbudget_mb = 1024\n").start()
        key = hub.create_device("disk2")["authentication"]["symmetricKey"]["primaryKey"]
        raw = Raw(hub.mqtt_port)
        assert raw.connect("disk2", hub.username("disk2"), hub.device_token("disk2", key)) == 0
        acked, refused = publish_until_refused(raw, "disk2", "e", 20000, 2000)
        raw.close()
        assert refused, "publishing must stop when the disk is full"
        m = hub.metrics()
        assert m["weir_log_write_failing"] == 1
        end_at_failure = int(m["weir_log_end_offset"])
        filler.unlink()
        raw = Raw(hub.mqtt_port)
        assert raw.connect("disk2", hub.username("disk2"), hub.device_token("disk2", key)) == 0
        for k in range(50):
            body = json.dumps({"id": f"after-{k}", "pad": "q" * 2000}).encode()
            raw.publish("devices/disk2/messages/events/", body, pkid=k + 1)
            acked.append(f"after-{k}")
        raw.close()
        assert hub.metrics()["weir_log_write_failing"] == 0
        segments = sorted(p.name for p in (hub.data / "log").glob("*.log"))
        assert f"{end_at_failure:020}.log" in segments, (
            f"writing resumed in a segment that starts where the failure was, not through the failed descriptor: {segments}")
        assert hub.proc.poll() is None
        assert hub.stop() == 0
        got = archived_ids(hub)
        assert len(got) == len(set(got)), "duplicates"
        assert set(got) == set(acked), f"missing {len(set(acked) - set(got))}, extra {len(set(got) - set(acked))}"
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)


def test_the_worker_count_can_change_after_a_kill_9_mid_load(tmp_path, rules_dir):
    hub = Hub(tmp_path, rules_dir, config="[archive]\nmax_age_secs = 0.3\n", workers=1).start()
    keys = {f"wc-{i}": hub.create_device(f"wc-{i}")["authentication"]["symmetricKey"]["primaryKey"] for i in range(6)}
    pubs = [Publisher(hub, d, k) for d, k in keys.items()]
    stop = threading.Event()
    worker = threading.Thread(target=run_publishers, args=(pubs, stop), daemon=True)
    worker.start()
    try:
        time.sleep(2.0)
        hub.proc.kill()
        hub.proc.wait(10)
        hub.workers = 2
        hub.start()
        time.sleep(2.0)
        hub.proc.kill()
        hub.proc.wait(10)
        hub.workers = 1
        hub.start()
        time.sleep(1.0)
    finally:
        stop.set()
        worker.join(10)
    deadline = time.time() + 30
    while any(p.outstanding() for p in pubs) and time.time() < deadline:
        time.sleep(0.1)
    for p in pubs:
        p.close()
    assert hub.stop() == 0
    acked = set().union(*(p.acked for p in pubs))
    sent = set().union(*(p.sent for p in pubs))
    ids = archived_ids(hub)
    assert len(acked) > 300, f"the test should exercise the hub ({len(acked)} acknowledged)"
    assert len(ids) == len(set(ids)), f"duplicates in the archive: {len(ids) - len(set(ids))}"
    assert not acked - set(ids), f"{len(acked - set(ids))} acknowledged messages are not archived"
    assert set(ids) <= sent
