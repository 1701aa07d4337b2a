"""Secrets stay private and each hub's development CA is its own: data directory 0700,
every file in it 0600, and a CA that lives a few years, is constrained to the hub's names
and is told apart from other hubs' CAs in one trust bundle."""

import json
import os
import stat
import subprocess
import time

from mqttclients import Device
from weirhub import Hub


def test_the_data_directory_is_private_after_real_use(hub):
    key = hub.create_device("sec")["authentication"]["symmetricKey"]["primaryKey"]
    d = Device(hub, "sec", hub.device_token("sec", key))
    assert d.connect() == 0
    assert d.publish(d.telemetry_topic(), json.dumps({"temp": 40}))
    d.close()
    r = hub.call("POST", "/devices/sec/messages/deviceBound", headers={"Content-Type": "text/plain"})
    assert r.status_code == 204
    hub.wait_rows("archive", 1)
    assert hub.stop() == 0
    checked = 0
    for root, dirs, files in os.walk(hub.data):
        for name in dirs:
            mode = stat.S_IMODE(os.stat(os.path.join(root, name)).st_mode)
            assert mode == 0o700, f"{os.path.join(root, name)} is {oct(mode)}"
        for name in files:
            path = os.path.join(root, name)
            mode = stat.S_IMODE(os.stat(path).st_mode)
            assert mode & 0o077 == 0, f"{path} is {oct(mode)}"
            checked += 1
    assert stat.S_IMODE(os.stat(hub.data).st_mode) == 0o700
    names = {p.name for p in hub.data.rglob("*")}
    assert {"registry.redb", "c2d.redb", "iothubowner.connstr", "ca.key", "server.key"} <= names
    assert any(n.endswith(".parquet") for n in names) and any(n.endswith(".log") for n in names)
    assert checked >= 10


def text(cert):
    r = subprocess.run(["openssl", "x509", "-in", str(cert), "-noout", "-text", "-dates"],
                       capture_output=True, text=True, check=True)
    return r.stdout


def test_two_hubs_cas_in_one_bundle_each_verify_their_own_hub(tmp_path, rules_dir):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = Hub(tmp_path / "a", rules_dir).start()
    b = Hub(tmp_path / "b", rules_dir).start()
    try:
        bundle = tmp_path / "bundle.pem"
        bundle.write_text(open(a.ca).read() + open(b.ca).read())
        ca_a, ca_b = text(a.ca), text(b.ca)
        subject = [l for l in ca_a.splitlines() if "Subject:" in l][0]
        assert subject != [l for l in ca_b.splitlines() if "Subject:" in l][0], "each hub's CA has its own name"
        assert "Name Constraints" in ca_a and "DNS:localhost" in ca_a and "IP:127.0.0.1" in ca_a
        not_after = [l for l in ca_a.splitlines() if l.startswith("notAfter=")][0].split("=", 1)[1]
        years = (time.mktime(time.strptime(not_after, "%b %d %H:%M:%S %Y %Z")) - time.time()) / (365 * 86400)
        assert 4 < years <= 5.1, f"the CA is valid for {years:.1f} years"
        server = text(a.data / "tls" / "server.pem")
        assert "Authority Key Identifier" in server
        for hub in (a, b):
            key = hub.create_device("bundled")["authentication"]["symmetricKey"]["primaryKey"]
            d = Device(hub, "bundled", hub.device_token("bundled", key), tls=False)
            d.client.tls_set(ca_certs=str(bundle))
            d.port = hub.mqtts_port
            assert d.connect() == 0, "the client finds this hub's CA in the bundle"
            d.close()
    finally:
        a.stop()
        b.stop()
