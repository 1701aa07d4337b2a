"""The registry REST API (IoT Hub subset) and the `weir device` commands."""

import os
import stat
import time

from conftest import run_weir
from weirhub import sas_token


def test_registry_status_codes_and_etags(hub):
    assert hub.call("GET", "/devices", auth=False).status_code == 401
    bad = hub.service_headers(key="AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=")
    assert hub.call("GET", "/devices", headers=bad).status_code == 401
    expired = hub.service_headers(expiry=int(time.time()) - 10)
    assert hub.call("GET", "/devices", headers=expired).status_code == 401
    other_policy = hub.service_headers(policy="registryRead")
    assert hub.call("GET", "/devices", headers=other_policy).status_code == 401

    r = hub.call("PUT", "/devices/d1", {"deviceId": "d1", "tags": {"site": "berlin"}})
    assert r.status_code == 200, r.text
    d1 = r.json()
    assert d1["deviceId"] == "d1" and d1["status"] == "enabled" and d1["connectionState"] == "Disconnected"
    keys = d1["authentication"]["symmetricKey"]
    assert keys["primaryKey"] != keys["secondaryKey"] and len(keys["primaryKey"]) == 44
    assert r.headers["ETag"] == f'"{d1["etag"]}"'

    assert hub.call("PUT", "/devices/d1", {"deviceId": "d1"}).status_code == 409
    assert hub.call("PUT", "/devices/d1", {"deviceId": "d2"}, headers={"If-Match": "*"}).status_code == 400
    r = hub.call("PUT", "/devices/d1", {"deviceId": "d1", "status": "disabled"}, headers={"If-Match": '"stale"'})
    assert r.status_code == 412 and "PreconditionFailed" in r.json()["Message"]
    r = hub.call("PUT", "/devices/d1", {"deviceId": "d1", "status": "disabled"}, headers={"If-Match": f'"{d1["etag"]}"'})
    assert r.status_code == 200 and r.json()["status"] == "disabled" and r.json()["etag"] != d1["etag"]
    assert r.json()["authentication"]["symmetricKey"] == keys, "keys survive an update"

    r = hub.call("GET", "/devices/nope")
    assert r.status_code == 404 and "DeviceNotFound" in r.json()["Message"]
    assert hub.call("PUT", "/devices/bad%20id", {}).status_code == 400
    r = hub.call("PUT", "/devices/k", {"authentication": {"symmetricKey": {"primaryKey": "short"}}})
    assert r.status_code == 400
    assert hub.call("PUT", "/devices/k", None, headers={"Content-Type": "application/json"}).status_code == 200
    assert [d["deviceId"] for d in hub.call("GET", "/devices").json()] == ["d1", "k"]
    assert len(hub.call("GET", "/devices?top=1").json()) == 1
    assert hub.call("DELETE", "/devices/d1").status_code == 204
    assert hub.call("DELETE", "/devices/d1").status_code == 404
    assert hub.call("GET", "/devices/d1").status_code == 404


def test_registry_survives_restart_and_keys_are_private(hub):
    hub.create_device("keep", tags={"floor": 2})
    mode = stat.S_IMODE(os.stat(hub.data / "iothubowner.connstr").st_mode)
    assert mode == 0o600
    assert stat.S_IMODE(os.stat(hub.data / "tls" / "server.key").st_mode) == 0o600
    connstr = (hub.data / "iothubowner.connstr").read_text()
    assert connstr.startswith("HostName=localhost;SharedAccessKeyName=iothubowner;SharedAccessKey=")
    assert hub.stop() == 0
    hub.start()
    d = hub.call("GET", "/devices/keep").json()
    assert d["tags"] == {"floor": 2}
    assert (hub.data / "iothubowner.connstr").read_text() == connstr


def test_device_commands(hub):
    common = ["--api", hub.api, "--data-dir", hub.data]
    r = run_weir("device", "create", "cli-1", "--tag", "site=oslo", "--tag", "floor=3", *common)
    assert r.returncode == 0, r.stderr
    assert "HostName=localhost;DeviceId=cli-1;SharedAccessKey=" in r.stdout
    r = run_weir("device", "create", "cli-1", *common)
    assert r.returncode == 1 and "already exists" in r.stderr
    r = run_weir("device", "list", *common)
    assert "cli-1" in r.stdout and "enabled" in r.stdout
    r = run_weir("device", "show", "cli-1", *common)
    assert '"site": "oslo"' in r.stdout and '"floor": 3' in r.stdout
    r = run_weir("device", "set-status", "cli-1", "disabled", *common)
    assert r.returncode == 0 and hub.call("GET", "/devices/cli-1").json()["status"] == "disabled"
    key = hub.call("GET", "/devices/cli-1").json()["authentication"]["symmetricKey"]["primaryKey"]
    r = run_weir("device", "connection-string", "cli-1", *common)
    assert r.stdout.strip() == f"HostName=localhost;DeviceId=cli-1;SharedAccessKey={key}"
    r = run_weir("device", "token", "cli-1", "--ttl", "120", *common)
    token = r.stdout.strip()
    se = int(token.rsplit("se=", 1)[1])
    assert token == sas_token("localhost/devices/cli-1", key, se)
    assert abs(se - (time.time() + 120)) < 10
    r = run_weir("device", "show", "nobody", *common)
    assert r.returncode == 1 and "404" in r.stderr
    r = run_weir("device", "list", "--api", "http://127.0.0.1:9", "--data-dir", hub.data)
    assert r.returncode == 1 and "is `weir serve` running" in r.stderr
    r = run_weir("device", "delete", "cli-1", *common)
    assert r.returncode == 0 and hub.call("GET", "/devices/cli-1").status_code == 404
