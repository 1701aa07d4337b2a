"""`weir simulate` drives a real hub over TLS or QUIC and reports what happened."""

import json

import pytest

from conftest import run_weir


@pytest.mark.parametrize("transport", ["tls", "quic"])
def test_simulate_registers_publishes_and_waits_for_parquet(hub, transport):
    r = run_weir(
        "simulate", "--api", hub.api, "--data-dir", hub.data, "--mqtts", f"127.0.0.1:{hub.mqtts_port}",
        "--quic", f"127.0.0.1:{hub.quic_port}", "--transport", transport,
        "--devices", "5", "--messages", "40", "--qos", "1", "--wait-archived", "--json",
        "--payload", '{"temp": {{rand:10:20}}, "hum": {{randint:1:9}}, "seq": {{seq}}, "dev": "{{device}}"}',
    )
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["connected"] == 5 and report["sent"] == 200 and report["acked"] == 200
    assert report["archived"]["rows"] == 200
    assert report["latency_ms"]["p50"] > 0 and report["latency_ms"]["max"] >= report["latency_ms"]["p99"]
    rows = hub.query("archive", "SELECT device_id, count(*), min(seq), max(seq), min(temp) >= 10, max(hum) <= 9 FROM t GROUP BY 1 ORDER BY 1")
    assert rows == [(f"sim-{i:04}", 40, 0, 39, True, True) for i in range(5)]
    assert len(hub.call("GET", "/devices").json()) == 5
    assert hub.metric("weir_gateway_messages_total", protocol={"tls": "mqtt", "quic": "mqtt-quic"}[transport]) == 200


def test_simulate_qos0_plain_and_bad_arguments(hub):
    r = run_weir(
        "simulate", "--api", hub.api, "--data-dir", hub.data, "--mqtt", f"127.0.0.1:{hub.mqtt_port}",
        "--devices", "2", "--messages", "25", "--qos", "0", "--prefix", "q0-", "--quiet",
    )
    assert r.returncode == 0, r.stderr
    assert "sent 50" in r.stdout
    hub.wait_rows("archive", 50)
    r = run_weir("simulate", "--messages", "0", "--devices", "1", "--api", hub.api, "--data-dir", hub.data)
    assert r.returncode == 1 and "--duration" in r.stderr
    r = run_weir("simulate", "--payload", "{{nope}}", "--api", hub.api, "--data-dir", hub.data)
    assert r.returncode == 1 and "unknown placeholder" in r.stderr


def test_default_config_is_valid_and_documented(tmp_path):
    r = run_weir("default-config")
    assert r.returncode == 0 and "[archive]" in r.stdout and "max_message_bytes" in r.stdout
    (tmp_path / "weir.toml").write_text(r.stdout.replace('http = "127.0.0.1:8080"', 'http = "nowhere"'))
    r = run_weir("serve", "-c", tmp_path / "weir.toml", "--data-dir", tmp_path / "d", cwd=tmp_path)
    assert r.returncode == 1 and "listen.http" in r.stderr
    assert not (tmp_path / "d").exists(), "nothing starts before the configuration is valid"
