"""Hub events are durable: every registry or twin change produces its event exactly once,
also when the hub is killed right after the change."""

import json
import shutil

import pytest

from conftest import FIXTURES
from weirhub import Hub



@pytest.fixture
def event_rules(tmp_path):
    d = tmp_path / "rules"
    shutil.copytree(FIXTURES / "rules", d)
    shutil.copy(FIXTURES / "extra" / "events.toml", d)
    return d


def events(hub, device):
    return [(op, json.loads(body)) for op, body in hub.query(
        "events", f"SELECT properties['opType'], body FROM t WHERE device_id = '{device}' ORDER BY ingest_offset")]


def test_every_change_has_its_event_and_tags_bump_the_twin_version(tmp_path, event_rules):
    hub = Hub(tmp_path, event_rules).start()
    try:
        hub.create_device("ev")
        v0 = hub.call("GET", "/twins/ev").json()["version"]
        r = hub.call("PUT", "/devices/ev", {"deviceId": "ev", "tags": {"site": "berlin"}}, headers={"If-Match": "*"})
        assert r.status_code == 200, r.text
        assert hub.call("GET", "/twins/ev").json()["version"] == v0 + 1, "a tag change is a twin change"
        r = hub.call("PUT", "/devices/ev", {"deviceId": "ev", "status": "disabled"}, headers={"If-Match": "*"})
        assert r.status_code == 200
        r = hub.call("PATCH", "/twins/ev", {"properties": {"desired": {"fan": "on"}}}, headers={"If-Match": "*"})
        assert r.status_code == 200
        assert hub.call("DELETE", "/devices/ev").status_code == 204
        assert hub.stop() == 0
        got = events(hub, "ev")
        assert [op for op, _ in got] == [
            "createDeviceIdentity", "updateTwin", "updateDeviceIdentity", "updateTwin", "deleteDeviceIdentity"]
        assert got[1][1]["tags"] == {"site": "berlin"} and got[1][1]["version"] == v0 + 1
        assert got[2][1]["status"] == "disabled"
        assert got[3][1]["properties"]["desired"]["fan"] == "on"
    finally:
        hub.stop()


def test_events_survive_a_kill_right_after_the_change(tmp_path, event_rules):
    hub = Hub(tmp_path, event_rules).start()
    hub.create_device("crash")
    for i in range(6):
        r = hub.call("PUT", "/devices/crash", {"deviceId": "crash", "tags": {"n": i}}, headers={"If-Match": "*"})
        assert r.status_code == 200, r.text
        hub.proc.kill()
        hub.proc.wait(10)
        hub.start()
    assert hub.stop() == 0
    got = events(hub, "crash")
    tags = [body["tags"]["n"] for op, body in got if op == "updateTwin"]
    assert sorted(tags) == list(range(6)), f"each tag change exactly once, got {tags}"
    assert [op for op, _ in got].count("createDeviceIdentity") == 1
