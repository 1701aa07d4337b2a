"""Sink I/O errors never lose acknowledged data: the endpoint turns unhealthy, the log keeps
its messages, and once the problem is gone it catches up without a restart."""

import datetime
import json
import subprocess
import threading
import time

from mqttclients import Device
from conftest import mount_tmpfs
from weirhub import Hub


def endpoint(hub, name):
    return hub.endpoint(name)


def wait_state(hub, name, state, timeout=30):
    return hub.wait_endpoint(name, state, timeout)


def publish_batch(dev, first, n):
    acked = []
    for i in range(first, first + n):
        mid = f"m-{i}"
        assert dev.publish(dev.telemetry_topic(f"%24.mid={mid}"), json.dumps({"id": mid, "pad": "x" * 200})), mid
        acked.append(mid)
    return acked


def archived(hub):
    return [json.loads(b)["id"] for (b,) in hub.query("archive", "SELECT body FROM t")]


def wait_archived(hub, expected, timeout=60):
    deadline = time.time() + timeout
    got = []
    while time.time() < deadline:
        got = archived(hub)
        if len(got) >= len(expected):
            break
        time.sleep(0.2)
    assert len(got) == len(set(got)), f"duplicates: {len(got) - len(set(got))}"
    assert set(got) == set(expected), f"missing {sorted(set(expected) - set(got))[:5]}\n{hub.log_text()[-3000:]}"


def test_a_blocked_partition_directory_heals_without_a_restart(hub):
    key = hub.create_device("blk")["authentication"]["symmetricKey"]["primaryKey"]
    pid = hub.proc.pid
    today = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    blocker = hub.data / "archive" / "archive" / f"date={today}"
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("a regular file where the partition directory goes")

    dev = Device(hub, "blk", hub.device_token("blk", key))
    assert dev.connect() == 0
    acked = publish_batch(dev, 0, 40)
    e = wait_state(hub, "archive", "unhealthy")
    assert f"date={today}" in e["lastError"] and e["lag"] > 0
    m = hub.metrics()
    assert m['weir_endpoint_state{endpoint="archive",state="unhealthy"}'] == 1
    assert endpoint(hub, "hot")["state"] == "healthy", "other endpoints are not affected"
    acked += publish_batch(dev, 40, 40)
    time.sleep(1.5)
    assert archived(hub) == [], "nothing is archived while the partition is blocked"
    assert "endpoint is unhealthy" in hub.log_text()

    # Recovery under load: the device keeps publishing while the endpoint catches up.
    more = []
    stop = threading.Event()

    def keep_publishing():
        i = 80
        while not stop.is_set():
            more.extend(publish_batch(dev, i, 5))
            i += 5

    publisher = threading.Thread(target=keep_publishing)
    publisher.start()
    blocker.unlink()
    try:
        wait_state(hub, "archive", "healthy")
    finally:
        stop.set()
        publisher.join()
    assert len(more) > 20, "the device published while the endpoint recovered"
    acked += more
    wait_archived(hub, acked)
    dev.close()
    assert hub.proc.pid == pid and hub.proc.poll() is None, "no restart"
    assert hub.log_text().count("endpoint is unhealthy") == 1, "logged once per state change"
    assert hub.metrics()["weir_engine_replayed_total"] >= 80


def test_a_full_archive_disk_heals_without_a_restart(tmp_path, rules_dir):
    hub = Hub(tmp_path, rules_dir, config="[archive]\nmax_age_secs = 0.3\n")
    mount = hub.data / "archive"
    mount.mkdir(parents=True)
    mount_tmpfs(mount, "4m")
    try:
        filler = mount / "filler"
        with open(filler, "wb") as f:
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError:
                pass
        hub.start()
        key = hub.create_device("full")["authentication"]["symmetricKey"]["primaryKey"]
        dev = Device(hub, "full", hub.device_token("full", key))
        assert dev.connect() == 0
        acked = publish_batch(dev, 0, 200)
        e = wait_state(hub, "archive", "unhealthy")
        assert "No space left" in e["lastError"], e
        acked += publish_batch(dev, 200, 50)
        assert archived(hub) == []
        filler.unlink()
        wait_archived(hub, acked)
        wait_state(hub, "archive", "healthy")
        dev.close()
        assert hub.stop() == 0
    finally:
        hub.stop()
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_clean_stop_retries_a_failed_endpoint_before_its_backoff(hub):
    key = hub.create_device("stop")["authentication"]["symmetricKey"]["primaryKey"]
    today = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    blocker = hub.data / "archive" / "archive" / f"date={today}"
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("in the way")
    dev = Device(hub, "stop", hub.device_token("stop", key))
    assert dev.connect() == 0
    acked = publish_batch(dev, 0, 30)
    wait_state(hub, "archive", "unhealthy")
    # Let the backoff grow past what the stop below waits for.
    time.sleep(3.5)
    acked += publish_batch(dev, 30, 10)
    dev.close()
    blocker.unlink()
    assert hub.stop() == 0
    assert sorted(archived(hub)) == sorted(acked), "the stop archived what the endpoint had missed"
