"""A graceful stop finalises every open file: nothing acknowledged is lost."""

import json
import signal

from mqttclients import Device


def test_sigterm_finalises_open_files(tmp_path, rules_dir):
    from weirhub import Hub
    hub = Hub(tmp_path, rules_dir, config="[archive]\nmax_age_secs = 3600\n").start()
    key = hub.create_device("sd")["authentication"]["symmetricKey"]["primaryKey"]
    d = Device(hub, "sd", hub.device_token("sd", key))
    assert d.connect() == 0
    for i in range(200):
        assert d.publish(d.telemetry_topic(), json.dumps({"seq": i}))
    assert not list((hub.data / "archive").rglob("*.parquet")), "files stay open until the stop"
    assert hub.stop(signal.SIGTERM) == 0
    rows = hub.query("archive", "SELECT seq FROM t ORDER BY seq")
    assert [r[0] for r in rows] == list(range(200))
    assert not list(hub.data.rglob("*.inprogress"))
    assert "everything accepted is archived and committed" in hub.log_text()
