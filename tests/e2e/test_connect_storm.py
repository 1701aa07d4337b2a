"""Connect storms: past `mqtt.connect_rate` a CONNECT is answered with CONNACK 3 (server
unavailable) before its credentials are read, and clients that retry get in; `weir
simulate --storm` drops every connection at once and measures the reconnect, spreading
connections over loopback source addresses. `mqtt.connect_rate_per_address` limits one
source address without touching the others."""

import json
import socket
import subprocess
import time

from conftest import run_weir
from rawmqtt import Raw
from weirhub import WEIR, Hub


def test_connects_past_the_rate_get_connack_3_and_retries_get_in(tmp_path, rules_dir):
    hub = Hub(tmp_path, rules_dir, config="[mqtt]\nconnect_rate = 5\n").start()
    try:
        key = hub.create_device("d1")["authentication"]["symmetricKey"]["primaryKey"]
        codes = []
        for _ in range(12):
            r = Raw(hub.mqtt_port, timeout=10)
            codes.append(r.connect("d1", hub.username("d1"), hub.device_token("d1", key)))
            r.close()
        # A second's worth of tokens, then refusals (a few may refill meanwhile).
        assert codes[:5] == [0] * 5, codes
        assert codes.count(3) >= 4 and set(codes) <= {0, 3}, codes
        # A refused CONNECT is not even authenticated: a garbage token gets 3 too.
        r = Raw(hub.mqtt_port, timeout=10)
        assert r.connect("d1", hub.username("d1"), "garbage") in (3, 5)
        r.close()
        assert hub.metric("weir_gateway_connects_throttled_total") >= 4

        # The storm, with the rate limit doing its work: every device gets back in.
        r = run_weir("simulate", "--api", hub.api, "--data-dir", hub.data, "--mqtt", f"127.0.0.1:{hub.mqtt_port}",
                     "--devices", "40", "--storm", "--duration", "0.5", "--source-ips", "127.0.0.2-127.0.0.5",
                     "--json", "--quiet")
        assert r.returncode == 0, r.stderr
        report = json.loads(r.stdout.strip().splitlines()[-1])
        assert report["connected"] == 40 and report["reconnected"] == 40, report
        assert report["storm_throttled"] > 0 and report["storm_seconds"] > 1, report
        assert report["errors"] == []
    finally:
        hub.stop()


def test_source_addresses_spread_connections(tmp_path, rules_dir):
    hub = Hub(tmp_path, rules_dir).start()
    try:
        sim = subprocess.Popen(
            [str(WEIR), "simulate", "--api", hub.api, "--data-dir", str(hub.data), "--mqtt", f"127.0.0.1:{hub.mqtt_port}",
             "--devices", "6", "--idle", "--duration", "4", "--source-ips", "127.0.0.7-127.0.0.9", "--quiet"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 15
        while hub.metric("weir_devices_connected") < 6:
            assert time.time() < deadline and sim.poll() is None, sim.stderr.read() if sim.poll() is not None else "slow"
            time.sleep(0.1)
        # Who is connected to the hub's MQTT port, from where.
        ss = subprocess.run(["ss", "-Htn", "state", "established", f"( sport = :{hub.mqtt_port} )"],
                            capture_output=True, text=True, check=True).stdout
        sources = sorted(line.split()[-1].rsplit(":", 1)[0] for line in ss.splitlines())
        assert sources == ["127.0.0.7"] * 2 + ["127.0.0.8"] * 2 + ["127.0.0.9"] * 2, ss
        assert sim.wait(30) == 0, sim.stderr.read()
        r = run_weir("simulate", "--api", hub.api, "--data-dir", hub.data, "--devices", "1",
                     "--source-ips", "127.0.0.9-127.0.0.1")
        assert r.returncode != 0 and "--source-ips" in r.stderr
    finally:
        hub.stop()


class RawFrom(Raw):
    """A raw MQTT client whose connection comes from `source` (a loopback address)."""

    def __init__(self, port, source, timeout=10):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0))
        self.buf = b""


def test_the_per_address_rate_limits_one_address_and_not_the_others(tmp_path, rules_dir):
    hub = Hub(tmp_path, rules_dir, config="[mqtt]\nconnect_rate = 0\nconnect_rate_per_address = 4\n").start()
    try:
        key = hub.create_device("d1")["authentication"]["symmetricKey"]["primaryKey"]

        def attempt(source):
            r = RawFrom(hub.mqtt_port, source)
            code = r.connect("d1", hub.username("d1"), hub.device_token("d1", key))
            r.close()
            return code

        busy = [attempt("127.0.0.20") for _ in range(10)]
        # Four tokens for that address, then refusals (one may refill meanwhile).
        assert busy[:4] == [0] * 4, busy
        assert busy.count(3) >= 4 and set(busy) <= {0, 3}, busy
        # Other addresses have buckets of their own, full.
        others = [attempt(f"127.0.0.{21 + i}") for i in range(4) for _ in range(3)]
        assert others == [0] * 12, others
        assert hub.metric("weir_gateway_connects_throttled_total") == busy.count(3)
    finally:
        hub.stop()


def thp_enabled(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("THP_enabled:"):
            return int(line.split()[1])
    raise AssertionError("the kernel reports no THP_enabled line")


def test_the_hub_turns_transparent_huge_pages_off_unless_mimalloc_is_told(tmp_path, rules_dir):
    # Huge pages kept a connection's scattered small allocations resident 2 MiB at a time
    # (decision 042); an operator can still ask mimalloc for them.
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
    hub = Hub(tmp_path / "a", rules_dir).start()
    try:
        assert thp_enabled(hub.proc.pid) == 0
    finally:
        hub.stop()
    asked = Hub(tmp_path / "b", rules_dir, wrapper=("env", "MIMALLOC_ALLOW_THP=1")).start()
    try:
        assert thp_enabled(asked.proc.pid) == 1
    finally:
        asked.stop()
