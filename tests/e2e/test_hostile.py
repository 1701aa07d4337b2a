"""Hostile input: malformed, truncated and oversized packets, slow-loris clients, random
bytes and a connect/disconnect storm. The hub keeps serving a well-behaved client, memory
stays bounded and nothing panics."""

import json
import os
import socket
import threading
import time

from mqttclients import Device
from rawmqtt import Raw, connect_packet, publish_packet
from weirhub import Hub


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS")) / 1024


def hammer(port, payloads, count, results, key, hang_up=False):
    """Opens `count` connections, sends each payload (then, with `hang_up`, closes its
    sending side), and records whether the hub closed the connection."""
    closed = 0
    for i in range(count):
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            for p in payloads(i):
                s.sendall(p)
            if hang_up:
                s.shutdown(socket.SHUT_WR)
            s.settimeout(5)
            try:
                while s.recv(65536):
                    pass
                closed += 1
            except (socket.timeout, TimeoutError):
                pass
            s.close()
        except OSError:
            closed += 1  # reset by the hub: also closed
    results[key] = closed


def slow_loris(port, n, results):
    socks = []
    for _ in range(n):
        try:
            socks.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        except OSError:
            pass
    packet = connect_packet("slow", "localhost/slow/?api-version=1", "x")
    start = time.time()
    dropped = set()
    i = 0
    while time.time() - start < 6 and len(dropped) < len(socks):
        for k, s in enumerate(socks):
            if k in dropped:
                continue
            try:
                s.sendall(packet[i % len(packet): i % len(packet) + 1])
            except OSError:
                dropped.add(k)
        i += 1
        time.sleep(0.5)
    results["slow_loris_dropped"] = len(dropped)
    results["slow_loris_total"] = len(socks)
    for s in socks:
        s.close()


def test_hostile_clients_do_not_hurt_a_good_one(tmp_path, rules_dir):
    hub = Hub(tmp_path, rules_dir, config="[mqtt]\nconnect_timeout_secs = 2\nmax_message_bytes = 65536\n").start()
    good_key = hub.create_device("good")["authentication"]["symmetricKey"]["primaryKey"]
    storm_key = hub.create_device("stormer")["authentication"]["symmetricKey"]["primaryKey"]
    good = Device(hub, "good", hub.device_token("good", good_key))
    assert good.connect() == 0
    base_rss = rss_mib(hub.proc.pid)

    stop = threading.Event()
    good_stats = {"acked": 0, "failed": 0, "worst": 0.0}

    def good_loop():
        seq = 0
        while not stop.is_set():
            t0 = time.time()
            if good.publish(good.telemetry_topic(), json.dumps({"seq": seq}), timeout=10):
                good_stats["acked"] += 1
            else:
                good_stats["failed"] += 1
            good_stats["worst"] = max(good_stats["worst"], time.time() - t0)
            seq += 1
            time.sleep(0.02)

    port = hub.mqtt_port
    auth = connect_packet("mal", "localhost/good/?api-version=1", "not-a-token")
    results = {}
    attacks = [
        threading.Thread(target=hammer, args=(port, lambda i: [b"\x30\xff\xff\xff\xff\xff"], 50, results, "bad_length")),
        threading.Thread(target=hammer, args=(port, lambda i: [b"\x10\xff\xff\xff\x7f"], 30, results, "huge_length")),
        threading.Thread(target=hammer, args=(port, lambda i: [auth[: len(auth) // 2]], 30, results, "truncated", True)),
        # Random bytes often look like the start of a longer packet, so the hub waits for the
        # connect timeout; spread them over threads to keep the test short.
        *[threading.Thread(target=hammer, args=(port, lambda i: [os.urandom(4096)], 10, results, f"random{k}")) for k in range(10)],
        threading.Thread(target=hammer, args=(port, lambda i: [publish_packet("a/b", b"x", 3, 1)], 30, results, "qos3_first")),
        threading.Thread(target=slow_loris, args=(port, 150, results)),
    ]

    def storm():
        ok = 0
        for i in range(150):
            try:
                r = Raw(port)
                if r.connect("stormer", hub.username("stormer"), hub.device_token("stormer", storm_key)) == 0:
                    ok += 1
                if i % 2:
                    r.send(b"\xe0\x00")
                r.close()
            except (OSError, AssertionError):
                pass
        for _ in range(500):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=5).close()
            except OSError:
                pass
        results["storm_ok"] = ok

    attacks.append(threading.Thread(target=storm))
    runner = threading.Thread(target=good_loop)
    runner.start()
    peak = base_rss
    for a in attacks:
        a.start()
    while any(a.is_alive() for a in attacks):
        peak = max(peak, rss_mib(hub.proc.pid))
        time.sleep(0.1)
    for a in attacks:
        a.join()
    time.sleep(0.5)
    stop.set()
    runner.join()
    good.close()

    assert hub.proc.poll() is None, "the hub died"
    assert good_stats["failed"] == 0 and good_stats["acked"] > 20, good_stats
    assert good_stats["worst"] < 5, f"the good client waited {good_stats['worst']:.1f} s"
    assert results["bad_length"] == 50 and results["huge_length"] == 30
    assert sum(results[f"random{k}"] for k in range(10)) == 100
    assert results["truncated"] == 30 and results["qos3_first"] == 30
    assert results["slow_loris_dropped"] == results["slow_loris_total"] > 100
    assert results["storm_ok"] == 150
    assert peak - base_rss < 100, f"RSS grew from {base_rss:.0f} to {peak:.0f} MiB"
    log = hub.log_text()
    assert "panicked" not in log
    hub.wait_rows("archive", good_stats["acked"])
    m = hub.metrics()
    assert hub.metric("weir_gateway_connects_refused_total", protocol="mqtt") >= 200
    assert hub.stop() == 0
