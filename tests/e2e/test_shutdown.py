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


def test_a_second_signal_exits_at_once_and_the_log_keeps_everything(tmp_path, rules_dir):
    from rawmqtt import Raw
    from weirhub import Hub
    hub = Hub(tmp_path, rules_dir, config="[archive]\nmax_age_secs = 3600\n").start()
    key = hub.create_device("twice")["authentication"]["symmetricKey"]["primaryKey"]
    raw = Raw(hub.mqtt_port)
    assert raw.connect("twice", hub.username("twice"), hub.device_token("twice", key)) == 0
    for i in range(500):
        raw.publish("devices/twice/messages/events/", json.dumps({"seq": i}).encode(), pkid=i + 1)
    hub.proc.send_signal(signal.SIGTERM)
    hub.proc.send_signal(signal.SIGTERM)
    code = hub.proc.wait(10)
    raw.close()
    assert code in (0, 130), code
    if code == 130:
        assert "second signal: exiting immediately" in hub.log_text()
    hub.start()
    assert hub.stop() == 0
    rows = hub.query("archive", "SELECT seq FROM t ORDER BY seq")
    assert [r[0] for r in rows] == list(range(500))
