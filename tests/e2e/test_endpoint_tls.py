"""TLS from Weir to the systems it publishes to: an `mqtts://` endpoint on a mosquitto TLS
listener and an `https://` webhook, each trusting only the CA file named by `ca`; a broker
whose certificate another CA signed is refused (the endpoint is unhealthy and says why)."""

import subprocess

from sinkdevice import device, rules_dir, send
from test_mqtt_sink import Subscriber, mosquitto
from test_webhook_sink import SECRET, Receiver
from weirhub import Hub, free_port


def openssl(*args):
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_ca(d, name):
    """A CA and a server certificate for 127.0.0.1 / localhost signed by it."""
    d.mkdir(parents=True, exist_ok=True)
    ca, ca_key = d / f"{name}-ca.pem", d / f"{name}-ca.key"
    cert, key = d / f"{name}-server.pem", d / f"{name}-server.key"
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", ca_key, "-out", ca, "-days", "2",
            "-subj", f"/CN={name} test CA", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    csr = d / f"{name}.csr"
    openssl("req", *ec, "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1")
    ext = d / f"{name}.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
                   "extendedKeyUsage=serverAuth\n")
    openssl("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
            "-out", cert, "-days", "2", "-extfile", ext)
    return ca, cert, key


def test_mqtts_and_https_endpoints_trust_their_ca_and_nothing_else(tmp_path):
    ca, cert, key = make_ca(tmp_path / "pki", "broker")
    other_ca, _, _ = make_ca(tmp_path / "pki", "other")
    plain, secure = free_port(), free_port()
    broker = mosquitto(tmp_path, plain, wait_for=secure,
                       extra=f"listener {secure} 127.0.0.1\ncafile {ca}\ncertfile {cert}\nkeyfile {key}\n")
    rx = Receiver(tls=(str(cert), str(key)))
    d = rules_dir(tmp_path, f"""
[[endpoint]]
name = "secure-broker"
type = "mqtt"
url = "mqtts://127.0.0.1:{secure}"
topic = "weir/{{deviceId}}"
ca = "{ca}"

[[endpoint]]
name = "secure-hook"
type = "webhook"
url = "https://127.0.0.1:{rx.port}/hooks"
secret = "{SECRET}"
max_delay_ms = 50
ca = "{ca}"

[[endpoint]]
name = "wrong-ca"
type = "mqtt"
url = "mqtts://127.0.0.1:{secure}"
topic = "never/{{deviceId}}"
client_id = "weir-wrong-ca"
ca = "{other_ca}"

[[route]]
name = "all"
condition = "true"
endpoints = ["secure-broker", "secure-hook", "wrong-ca"]
""")
    hub = Hub(tmp_path, d).start()
    sub = Subscriber(plain)
    try:
        r = device(hub, "tls-1")
        for i in range(30):
            send(r, "tls-1", i, 25)
        r.close()
        got = sub.wait(30)
        assert {t for t, _ in got} == {"weir/tls-1"}, got[:3]
        assert len({p for _, p in got}) == 30
        lines = rx.wait(30)
        assert {l["messageId"] for l in lines} == {f"m{i}" for i in range(30)}
        assert rx.bad_signatures == 0
        e = hub.wait_endpoint("wrong-ca", "unhealthy", timeout=30)
        assert "certificate" in (e["lastError"] or "").lower(), e
        assert hub.endpoint("secure-broker")["state"] == "healthy"
        assert hub.endpoint("secure-hook")["state"] == "healthy"
    finally:
        sub.close()
        hub.stop()
        rx.close()
        broker.kill()
