"""Directory syncs that durability depends on, observed with strace on a real hub: a new
partition directory is synced into its parent, a committed file's directory is synced
after the rename that makes it visible, and the log directory after a new segment."""

import json
import re
import time
from collections import defaultdict

from mqttclients import Device
from weirhub import Hub

CALL = re.compile(r"^(\d+)\s+(\w+)\((.*)\)\s+=\s+(-?\d+)")


def parse(trace):
    """Per thread, the calls in order: (name, args, result)."""
    by_thread = defaultdict(list)
    for line in trace.read_text().splitlines():
        m = CALL.match(line)
        if m:
            by_thread[m.group(1)].append((m.group(2), m.group(3), int(m.group(4))))
    return by_thread


def paths(args):
    return re.findall(r'"([^"]*)"', args)


def synced_after(calls, i, directory):
    """True when, after call i, the thread opens `directory` and fsyncs that descriptor."""
    fds = set()
    for name, args, result in calls[i + 1:]:
        if name == "openat" and directory in paths(args) and result >= 0:
            fds.add(result)
        if name == "fsync" and int(args) in fds:
            return True
    return False


def test_directories_are_synced_after_new_entries(tmp_path, rules_dir):
    trace = tmp_path / "strace.txt"
    hub = Hub(tmp_path, rules_dir, config="[log]\nsegment_mb = 1\nbudget_mb = 64\n",
              wrapper=["strace", "-f", "-qq", "-o", str(trace),
                       "-e", "trace=openat,fsync,rename,renameat,renameat2,mkdir,mkdirat"]).start(timeout=60)
    try:
        key = hub.create_device("dirs")["authentication"]["symmetricKey"]["primaryKey"]
        d = Device(hub, "dirs", hub.device_token("dirs", key))
        assert d.connect() == 0
        # Enough to roll a 1 MiB segment.
        for i in range(700):
            d.publish(d.telemetry_topic(), json.dumps({"i": i, "pad": "x" * 2000}), qos=1 if i % 50 == 0 else 0)
        assert d.publish(d.telemetry_topic(), json.dumps({"i": "last"}))
        d.close()
        hub.wait_rows("archive", 1, timeout=30)
        assert hub.stop() == 0
    finally:
        hub.stop()
    calls = parse(trace)
    archive = str(hub.data / "archive")
    log_dir = str(hub.data / "log")
    made, renamed, segments = 0, 0, 0
    for thread, cs in calls.items():
        for i, (name, args, result) in enumerate(cs):
            p = paths(args)
            if name in ("mkdir", "mkdirat") and result == 0 and p and p[-1].startswith(archive):
                made += 1
                parent = p[-1].rsplit("/", 1)[0]
                assert synced_after(cs, i, parent), f"{parent} not synced after mkdir {p[-1]}"
            if name.startswith("rename") and result == 0 and len(p) == 2 and p[1].endswith(".parquet"):
                renamed += 1
                directory = p[1].rsplit("/", 1)[0]
                assert synced_after(cs, i, directory), f"{directory} not synced after renaming {p[1]}"
            if name == "openat" and result >= 0 and p and p[0].startswith(log_dir + "/") and p[0].endswith(".log") \
                    and "O_CREAT" in args and not p[0].endswith("00000000000000000000.log"):
                segments += 1
                assert synced_after(cs, i, log_dir), f"log directory not synced after creating {p[0]}"
    print(f"checked {made} new directories, {renamed} renames, {segments} new segments")
    assert made >= 2 and renamed >= 1 and segments >= 1, (made, renamed, segments)
