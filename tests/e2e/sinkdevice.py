"""A device for the endpoint tests: registered, connected over raw MQTT, and sending
numbered telemetry whose routing the tests check (`$.mid=m<i>`, a `kind` property)."""

import json

from rawmqtt import Raw


def rules_dir(tmp_path, text):
    """A rules directory holding `text` as rules.toml."""
    d = tmp_path / "rules"
    d.mkdir()
    (d / "rules.toml").write_text(text)
    return d


def device(hub, name):
    key = hub.create_device(name)["authentication"]["symmetricKey"]["primaryKey"]
    r = Raw(hub.mqtt_port, timeout=10)
    assert r.connect(name, hub.username(name), hub.device_token(name, key)) == 0
    return r


def send(r, dev, i, temp, kinds=2, extra=""):
    """Publishes `{"temp": temp, "i": i}` with message id `m<i>` and property
    `kind=k<i % kinds>` (plus `extra` properties), and waits for its PUBACK."""
    topic = f"devices/{dev}/messages/events/%24.mid=m{i}{extra}&kind=k{i % kinds}"
    pkid = i % 60000 + 1
    assert r.publish(topic, json.dumps({"temp": temp, "i": i}).encode(), pkid=pkid) == pkid
