"""`type = "webhook"` endpoints against a receiver written here: every routed message
arrives in signed NDJSON batches (the receiver checks each signature); a receiver that
answers 500 for a while gets everything afterwards; bad options are refused."""

import hashlib
import hmac
import json
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from conftest import run_weir
from sinkdevice import device, rules_dir, send
from weirhub import Hub

SECRET = "a-long-webhook-secret-for-tests"


class Receiver:
    """Checks every signature; answers 500 for `fail_for` seconds after the first request;
    serves HTTPS with `tls` = (certificate file, key file)."""

    def __init__(self, fail_for=0.0, tls=None):
        self.lines = []
        self.bad_signatures = 0
        self.failed = 0
        self.headers = []
        self.fail_until = 0.0
        self.fail_for = fail_for
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                want = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
                with outer.lock:
                    outer.headers.append({k.lower(): v for k, v in self.headers.items()})
                    if not hmac.compare_digest(self.headers.get("X-Weir-Signature", ""), want):
                        outer.bad_signatures += 1
                        self.send_response(401)
                        self.end_headers()
                        return
                    if outer.fail_for and not outer.fail_until:
                        outer.fail_until = time.time() + outer.fail_for
                    if time.time() < outer.fail_until:
                        outer.failed += 1
                        self.send_response(500)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    outer.lines.extend(json.loads(l) for l in body.decode().splitlines())
                self.send_response(204)
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*tls)
            self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait(self, n, timeout=30):
        deadline = time.time() + timeout
        while time.time() < deadline:
            with self.lock:
                if len({l["messageId"] for l in self.lines}) >= n:
                    break
            time.sleep(0.05)
        with self.lock:
            return list(self.lines)

    def close(self):
        self.server.shutdown()


def start(tmp_path, port):
    d = rules_dir(tmp_path, f"""
[[endpoint]]
name = "tickets"
type = "webhook"
url = "http://127.0.0.1:{port}/hooks/weir?src=test"
secret = "{SECRET}"
max_batch = 100
max_delay_ms = 50

[[route]]
name = "hot"
condition = "$body.temp > 30"
endpoints = ["tickets"]
""")
    return Hub(tmp_path, d).start()


def test_routed_messages_arrive_signed_in_batches(tmp_path):
    rx = Receiver()
    hub = start(tmp_path, rx.port)
    try:
        r = device(hub, "wh-1")
        for i in range(500):
            send(r, "wh-1", i, 40 if i % 2 else 10)
        r.close()
        lines = rx.wait(250)
        by_id = {l["messageId"]: l for l in lines}
        assert set(by_id) == {f"m{i}" for i in range(1, 500, 2)}
        l = by_id["m7"]
        assert l["deviceId"] == "wh-1" and l["route"] == "hot" and l["source"] == "Telemetry"
        assert l["body"] == {"temp": 40, "i": 7} and l["properties"] == {"kind": "k1"}
        assert isinstance(l["offset"], int) and l["enqueuedTime"].endswith("Z")
        assert l["systemProperties"]["weir-gateway"] == "mqtt"
        assert rx.bad_signatures == 0
        assert len(rx.headers) < 250, "messages are batched"
        h = rx.headers[0]
        assert h["content-type"] == "application/x-ndjson" and h["x-weir-endpoint"] == "tickets"
        assert SECRET not in hub.log_text()
    finally:
        hub.stop()
        rx.close()


def test_a_failing_receiver_gets_everything_afterwards(tmp_path):
    rx = Receiver(fail_for=4.0)
    hub = start(tmp_path, rx.port)
    try:
        r = device(hub, "wh-2")
        for i in range(300):
            send(r, "wh-2", i, 40)
        e = hub.wait_endpoint("tickets", "unhealthy", timeout=20)
        assert "500" in (e["lastError"] or ""), e
        for i in range(300, 400):
            send(r, "wh-2", i, 40)
        r.close()
        lines = rx.wait(400, timeout=60)
        ids = {l["messageId"] for l in lines}
        assert ids == {f"m{i}" for i in range(400)}, f"missing {sorted({f'm{i}' for i in range(400)} - ids)[:5]}"
        offsets = {}
        for l in lines:
            offsets.setdefault(l["offset"], set()).add(l["messageId"])
        assert all(len(v) == 1 for v in offsets.values()), "a repeat carries its original offset"
        assert rx.failed > 0
        hub.wait_endpoint("tickets", "healthy", timeout=60)
    finally:
        hub.stop()
        rx.close()


def test_rules_check_refuses_a_webhook_without_secret(tmp_path):
    d = tmp_path / "rules"
    d.mkdir()
    (d / "bad.toml").write_text(
        '[[endpoint]]\nname = "q"\ntype = "webhook"\nurl = "http://127.0.0.1:9/x"\n'
        '[[route]]\nname = "r"\ncondition = "true"\nendpoints = ["q"]\n')
    r = run_weir("rules", "check", d)
    assert r.returncode != 0 and "needs `secret`" in r.stderr, r.stderr
