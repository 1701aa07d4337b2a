"""Start a real `weir serve` for a test and talk to it like IoT Hub clients do."""

import base64
import hashlib
import hmac
import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.parse
from pathlib import Path

import duckdb
import requests

ROOT = Path(__file__).resolve().parents[2]
WEIR = Path(os.environ.get("WEIR_BIN", ROOT / "target" / "debug" / "weir"))


# Ports already handed out in this run. The kernel may give the same ephemeral port to
# two binds in a row once the first socket is closed, and a hub then refuses to start
# with two listeners on one address (a CI run failed that way).
_HANDED_OUT = set()


def _unused_port(kind):
    while True:
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def free_port():
    return _unused_port(socket.SOCK_STREAM)


def free_udp_port():
    return _unused_port(socket.SOCK_DGRAM)


def sas_token(resource, key_b64, expiry, policy=None):
    """A SAS token built the way the Azure device SDK builds it (spec §1)."""
    sr = urllib.parse.quote(resource, safe="")
    digest = hmac.new(base64.b64decode(key_b64), f"{sr}\n{expiry}".encode(), hashlib.sha256).digest()
    sig = urllib.parse.quote(base64.b64encode(digest).decode(), safe="")
    token = f"SharedAccessSignature sr={sr}&sig={sig}&se={expiry}"
    if policy:
        token += f"&skn={policy}"
    return token


class Hub:
    """One `weir serve` process with its own data directory, rules and ports."""

    def __init__(self, workdir, rules_dir, hostname="localhost", config="", fixed_ports=None, extra_args=(),
                 wrapper=(), workers=2, ip="127.0.0.1"):
        # The loopback address every listener binds (several hubs may each have 8883).
        self.ip = ip
        self.workdir = Path(workdir)
        self.data = self.workdir / "data"
        self.rules = Path(rules_dir)
        self.hostname = hostname
        ports = fixed_ports or {}
        self.fixed_ports = dict(ports)
        self.mqtt_port = ports.get("mqtt") or free_port()
        self.mqtts_port = ports.get("mqtts") or free_port()
        self.http_port = ports.get("http") or free_port()
        self.quic_port = ports.get("quic") or free_udp_port()
        # The Azure SDKs dial 8883 (MQTT/TLS) and 443 (WebSocket, service REST): fixed.
        self.https_port = ports.get("https")
        self.config_path = self.workdir / "weir.toml"
        # Files become visible fast unless a test sets its own [archive].
        archive = "" if "[archive]" in config else "[archive]\nmax_age_secs = 0.5\n"
        self.config_path.write_text(archive + "[logging]\nlevel = \"info\"\n" + config)
        self.extra_args = list(extra_args)
        # A command the hub runs under (strace, say).
        self.wrapper = list(wrapper)
        self.workers = workers
        self.proc = None
        self.log_path = self.workdir / "weir.log"

    @property
    def api(self):
        return f"http://{self.ip}:{self.http_port}"

    @property
    def ca(self):
        return str(self.data / "tls" / "ca.pem")

    def start(self, timeout=30, attempts=3):
        """Starts the hub. A port picked free can be taken by another process before the
        hub binds it (an ephemeral port of some client): then the hub says "Address already
        in use" and exits, and it is started again on newly picked ports."""
        for attempt in range(attempts):
            mark = self.log_path.stat().st_size if self.log_path.exists() else 0
            try:
                return self._start(timeout)
            except RuntimeError:
                taken = "Address already in use" in self.log_path.read_bytes()[mark:].decode(errors="replace")
                if not taken or attempt == attempts - 1:
                    raise
                self.repick_ports()

    def repick_ports(self):
        for name, pick in (("mqtt", free_port), ("mqtts", free_port), ("http", free_port), ("quic", free_udp_port)):
            if not self.fixed_ports.get(name):
                setattr(self, f"{name}_port", pick())

    def _start(self, timeout):
        if getattr(self, "log", None) and not self.log.closed:
            self.log.close()
        self.log = open(self.log_path, "ab")
        args = self.wrapper + [
            str(WEIR), "serve", "-c", str(self.config_path),
            "--data-dir", str(self.data), "--rules", str(self.rules),
            "--mqtt", f"{self.ip}:{self.mqtt_port}", "--mqtts", f"{self.ip}:{self.mqtts_port}",
            "--quic", f"{self.ip}:{self.quic_port}",
            "--http", f"{self.ip}:{self.http_port}", "--hostname", self.hostname, "--workers", str(self.workers),
        ] + (["--https", f"{self.ip}:{self.https_port}"] if self.https_port else []) + self.extra_args
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=self.log, cwd=self.workdir)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weir exited with {self.proc.returncode}:\n{self.log_text()}")
            try:
                if requests.get(self.api + "/health", timeout=0.5).ok:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.05)
        raise RuntimeError("weir did not become ready:\n" + self.log_text())

    def stop(self, sig=signal.SIGTERM, timeout=50):
        try:
            if self.proc is None or self.proc.poll() is not None:
                return self.proc.returncode if self.proc else None
            self.signal_hub(sig)
            try:
                return self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                threads = self.thread_states()
                self.proc.kill()
                raise AssertionError(
                    f"the hub did not stop within {timeout} s; its threads:\n{threads}"
                    f"\nthe end of its log:\n{self.log_text()[-3000:]}"
                ) from None
        finally:
            self.log.close()

    def thread_states(self):
        """Each thread of the hub: name, state and the kernel function it waits in."""
        lines = []
        try:
            pid = self.hub_pid()
            for tid in sorted(os.listdir(f"/proc/{pid}/task"), key=int):
                base = f"/proc/{pid}/task/{tid}"
                try:
                    name = open(f"{base}/comm").read().strip()
                    state = open(f"{base}/stat").read().rsplit(")", 1)[1].split()[0]
                    wchan = open(f"{base}/wchan").read().strip()
                except OSError:
                    continue
                lines.append(f"  {tid} {name} {state} {wchan}")
        except OSError as e:
            lines.append(f"  (cannot read: {e})")
        return "\n".join(lines)

    def signal_hub(self, sig):
        """Signals the hub itself, not a wrapper it runs under (the wrapper exits with it)."""
        os.kill(self.hub_pid(), sig)

    def hub_pid(self):
        """The hub's process: the wrapper's child, or the wrapper itself when it exec'd."""
        pid = self.proc.pid
        if self.wrapper:
            with open(f"/proc/{pid}/task/{pid}/children") as f:
                children = f.read().split()
            if children:
                return int(children[0])
        return pid

    def log_text(self):
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def wait_log(self, text, timeout=5):
        """The hub logs some events just after the client sees their effect (a connection
        is closed, then its end is logged), so log checks wait for the line."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if text in self.log_text():
                return True
            time.sleep(0.05)
        return False

    def endpoint(self, name):
        """An endpoint as `GET /endpoints` reports it (state, lastError, lag, ...)."""
        r = self.call("GET", "/endpoints")
        assert r.status_code == 200, r.text
        return next((e for e in r.json() if e["name"] == name), None)

    def wait_endpoint(self, name, state, timeout=30):
        deadline = time.time() + timeout
        while time.time() < deadline:
            e = self.endpoint(name)
            if e and e["state"] == state:
                return e
            time.sleep(0.1)
        raise AssertionError(f"{name} never became {state}: {self.endpoint(name)}\n{self.log_text()[-3000:]}")

    # --- service API -------------------------------------------------------------
    def owner_key(self):
        text = (self.data / "iothubowner.connstr").read_text().strip()
        return dict(kv.split("=", 1) for kv in text.split(";"))["SharedAccessKey"]

    def service_headers(self, key=None, expiry=None, policy="iothubowner"):
        expiry = expiry or int(time.time()) + 3600
        return {"Authorization": sas_token(self.hostname, key or self.owner_key(), expiry, policy)}

    def call(self, method, path, body=None, headers=None, auth=True):
        h = self.service_headers() if auth else {}
        h.update(headers or {})
        sep = "&" if "?" in path else "?"
        # Bytes go as they are (a C2D message's body); anything else as JSON.
        raw = body if isinstance(body, bytes) else None
        return requests.request(method, f"{self.api}{path}{sep}api-version=2021-04-12",
                                json=None if raw is not None else body, data=raw, headers=h, timeout=10)

    def create_device(self, device_id, status="enabled", tags=None):
        body = {"deviceId": device_id, "status": status, "authentication": {"type": "sas"}}
        if tags is not None:
            body["tags"] = tags
        r = self.call("PUT", f"/devices/{device_id}", body)
        assert r.status_code == 200, r.text
        return r.json()

    def connection_string(self, device_id, key):
        return f"HostName={self.hostname};DeviceId={device_id};SharedAccessKey={key}"

    def service_connection_string(self):
        return (self.data / "iothubowner.connstr").read_text().strip()

    def device_token(self, device_id, key, ttl=3600):
        return sas_token(f"{self.hostname}/devices/{device_id}", key, int(time.time()) + ttl)

    def username(self, device_id):
        return f"{self.hostname}/{device_id}/?api-version=2021-04-12"

    def metrics(self):
        out = {}
        for line in requests.get(self.api + "/metrics", timeout=5).text.splitlines():
            if line and not line.startswith("#"):
                k, v = line.split()
                out[k] = float(v)
        return out

    def metric(self, name, **labels):
        """The sum of `name`'s series whose labels include `labels` (e.g. protocol="mqtt")."""
        total = 0.0
        for key, value in self.metrics().items():
            base, _, rest = key.partition("{")
            if base != name:
                continue
            found = dict(re.findall(r'(\w+)="([^"]*)"', rest))
            if all(found.get(k) == v for k, v in labels.items()):
                total += value
        return total

    # --- archive ----------------------------------------------------------------
    def archive_glob(self, endpoint):
        return str(self.data / "archive" / endpoint / "**" / "*.parquet")

    def query(self, endpoint, sql="SELECT * FROM t"):
        """Runs SQL over an endpoint's Parquet files (hive partitions on) as table t."""
        con = duckdb.connect()
        if not list((self.data / "archive" / endpoint).rglob("*.parquet")):
            return []
        con.execute(
            f"CREATE VIEW t AS SELECT * FROM read_parquet('{self.archive_glob(endpoint)}', hive_partitioning = true)"
        )
        return con.execute(sql).fetchall()

    def wait_rows(self, endpoint, n, timeout=20):
        deadline = time.time() + timeout
        got = 0
        while time.time() < deadline:
            got = self.query(endpoint, "SELECT count(*) FROM t")
            got = got[0][0] if got else 0
            if got >= n:
                return got
            time.sleep(0.1)
        raise AssertionError(f"expected {n} rows in {endpoint}, found {got}\n{self.log_text()[-4000:]}")
