"""What a client that never authenticates can make the hub hold is bounded: WebSocket
frames, half-open HTTP requests, pending MQTT connections, CONNECT size and log lines."""

import json
import os
import resource
import socket
import ssl
import struct
import threading
import time

import requests

from mqttclients import Device
from rawmqtt import Raw, connect_packet, publish_packet
from weirhub import Hub, free_port


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS")) / 1024


def raise_own_fd_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def websocket_giant_frame(hub, size=48 << 20):
    """Upgrades to MQTT over WebSocket without authenticating and streams one frame of
    `size` bytes. Returns how many payload bytes the hub took before closing."""
    ctx = ssl.create_default_context(cafile=hub.ca)
    raw = socket.create_connection(("127.0.0.1", hub.https_port), timeout=10)
    s = ctx.wrap_socket(raw, server_hostname="localhost")
    key = "dGhlIHNhbXBsZSBub25jZQ=="
    s.sendall((f"GET /$iothub/websocket HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
               f"Sec-WebSocket-Protocol: mqtt\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(4096)
    assert head.startswith(b"HTTP/1.1 101"), head
    mask = os.urandom(4)
    s.sendall(bytes([0x82, 0x80 | 127]) + struct.pack(">Q", size) + mask)
    chunk = bytes(65536)
    sent = 0
    try:
        while sent < size:
            s.sendall(chunk)
            sent += len(chunk)
    except OSError:
        pass
    s.close()
    return sent


def test_giant_websocket_frames_and_half_open_requests_leave_a_good_client_served(tmp_path, rules_dir):
    raise_own_fd_limit()
    hub = Hub(tmp_path, rules_dir, fixed_ports={"https": free_port()},
              config="[http]\nheader_timeout_secs = 8\n").start()
    try:
        key = hub.create_device("good")["authentication"]["symmetricKey"]["primaryKey"]
        good = Device(hub, "good", hub.device_token("good", key))
        assert good.connect() == 0
        stats = {"acked": 0, "failed": 0}
        stop = threading.Event()

        def publish():
            seq = 0
            while not stop.is_set():
                if good.publish(good.telemetry_topic(), json.dumps({"seq": seq}), timeout=10):
                    stats["acked"] += 1
                else:
                    stats["failed"] += 1
                seq += 1
                time.sleep(0.05)

        runner = threading.Thread(target=publish)
        runner.start()
        time.sleep(1)
        base = rss_mib(hub.proc.pid)
        peak = base
        took = websocket_giant_frame(hub)
        assert took < 8 << 20, f"the hub read {took >> 20} MiB of an oversized frame before closing"

        half_open = []
        for _ in range(1000):
            s = socket.create_connection(("127.0.0.1", hub.http_port), timeout=10)
            s.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
            half_open.append(s)
            peak = max(peak, rss_mib(hub.proc.pid)) if len(half_open) % 100 == 0 else peak
        assert requests.get(hub.api + "/health", timeout=5).ok, "a good REST client is served meanwhile"
        assert hub.call("GET", "/devices/good").status_code == 200
        peak = max(peak, rss_mib(hub.proc.pid))
        # The kernel completes handshakes before the hub accepts them: wait for the accepts.
        # The header timeout (8 s here) is long enough that none has closed yet on a slow
        # machine.
        deadline = time.time() + 5
        while hub.metrics()["weir_http_connections"] < 1000 and time.time() < deadline:
            time.sleep(0.1)
        assert hub.metrics()["weir_http_connections"] >= 1000

        # The header timeout closes every one of them.
        deadline = time.time() + 15
        closed = 0
        for s in half_open:
            s.settimeout(max(0.1, deadline - time.time()))
            try:
                while s.recv(4096):
                    pass
                closed += 1
            except (socket.timeout, TimeoutError):
                pass
            except OSError:
                closed += 1
            s.close()
        stop.set()
        runner.join()
        good.close()
        assert closed == 1000, f"only {closed} half-open requests were closed by the header timeout"
        assert stats["failed"] == 0 and stats["acked"] > 20, stats
        assert peak - base < 20, f"RSS grew from {base:.1f} to {peak:.1f} MiB"
        log = hub.log_text()
        assert "panicked" not in log
        assert hub.stop() == 0
    finally:
        hub.stop()


def test_pending_connections_connect_size_and_refusal_logs_are_bounded(tmp_path, rules_dir):
    hub = Hub(tmp_path, rules_dir,
              config="[mqtt]\nmax_pending_connections = 20\nconnect_timeout_secs = 2\n").start()
    try:
        key = hub.create_device("ok")["authentication"]["symmetricKey"]["primaryKey"]
        idle = [socket.create_connection(("127.0.0.1", hub.mqtt_port), timeout=5) for _ in range(50)]
        time.sleep(0.5)
        shut = 0
        for s in idle:
            s.settimeout(0.2)
            try:
                if s.recv(16) == b"":
                    shut += 1
            except (socket.timeout, TimeoutError):
                pass
            except OSError:
                shut += 1
        assert shut >= 30, f"only {shut} of 50 unauthenticated connections were turned away"
        assert hub.metric("weir_gateway_connections_over_pending_limit_total", protocol="mqtt") >= 30
        for s in idle:
            s.close()
        time.sleep(2.5)

        # A CONNECT over 8 KiB is refused before it is read.
        big = Raw(hub.mqtt_port)
        big.send(connect_packet("ok", hub.username("ok"), "x" * 9000))
        assert big.closed(5) and big.buf == b"", "no CONNACK for an oversized CONNECT"

        before = len(hub.log_text())
        for _ in range(60):
            r = Raw(hub.mqtt_port)
            try:
                r.send(publish_packet("a" * 100, b"p" * 200_000, 0, 0))
            except OSError:
                pass
            r.closed(2)
            r.close()
        time.sleep(0.5)
        added = hub.log_text()[before:]
        assert len(added) < 20_000, f"{len(added)} bytes of log for 60 refused clients"
        assert "ppppp" not in added, "packet contents never go into a log line"
        assert added.count("connection refused") <= 12, "refusals are rate-limited"

        good = Raw(hub.mqtt_port)
        assert good.connect("ok", hub.username("ok"), hub.device_token("ok", key)) == 0
        good.close()
        assert hub.stop() == 0
    finally:
        hub.stop()


def test_http_connections_beyond_the_cap_are_closed_as_they_arrive(tmp_path, rules_dir):
    hub = Hub(tmp_path, rules_dir, config="[http]\nmax_connections = 5\nheader_timeout_secs = 30\n").start()
    try:
        # The readiness probe's connection may still count for a moment.
        time.sleep(0.5)
        socks = [socket.create_connection(("127.0.0.1", hub.http_port), timeout=5) for _ in range(8)]
        for s in socks:
            try:
                s.sendall(b"GET /health HTTP/1.1\r\n")
            except OSError:
                pass
        time.sleep(0.5)
        open_ = 0
        for s in socks:
            s.settimeout(0.3)
            try:
                if s.recv(4096) != b"":
                    open_ += 1
            except (socket.timeout, TimeoutError):
                open_ += 1
            except OSError:
                pass
        assert open_ == 5, f"{open_} connections held open; the cap is 5"
        for s in socks:
            s.close()
        time.sleep(0.5)
        assert requests.get(hub.api + "/health", timeout=5).ok, "freed slots serve again"
        assert hub.metrics()["weir_http_connections_over_limit_total"] >= 3
        assert hub.stop() == 0
    finally:
        hub.stop()


def test_the_open_file_limit_is_raised_to_the_hard_limit(tmp_path, rules_dir):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert hard > 256, "the test needs a hard limit above 256"
    hub = Hub(tmp_path, rules_dir, wrapper=["prlimit", f"--nofile=256:{hard}", "--"]).start()
    try:
        with open(f"/proc/{hub.hub_pid()}/limits") as f:
            line = next(l for l in f if l.startswith("Max open files"))
        got_soft, got_hard = (int(x) for x in line.split()[3:5])
        # The soft limit goes to the hard one, which goes up to fs.nr_open where the
        # process may raise it (root with CAP_SYS_RESOURCE), and stays otherwise.
        assert got_soft == got_hard >= hard, line
        assert "open file limit (RLIMIT_NOFILE)" in hub.log_text()
        assert hub.stop() == 0
    finally:
        hub.stop()
