"""Rules as files: check, test, hot reload."""

import json
import time
from pathlib import Path

from conftest import run_weir
from mqttclients import Device
from weirhub import ROOT

FIX = ROOT / "rules" / "tests" / "fixtures"


def test_rules_check_accepts_good_and_rejects_broken():
    r = run_weir("rules", "check", FIX / "ok")
    assert r.returncode == 0 and r.stdout.startswith("ok: 3 endpoint(s), 2 route(s)")
    r = run_weir("rules", "check", ROOT / "rules")
    assert r.returncode == 0, "the shipped example must be valid"
    r = run_weir("rules", "check", FIX / "broken")
    assert r.returncode == 1
    assert "broken/syntax_toml.toml:2:16" in r.stderr and "is defined twice" in r.stderr
    assert "error(s)" in r.stderr


def test_rules_check_validates_insights(tmp_path):
    d = tmp_path / "rules"
    d.mkdir()
    (d / "i.toml").write_text(
        '[[insight]]\nname = "temp_1m"\nwindow = "tumbling 1m"\n'
        'aggregates = { n = "count()", avg = "avg($body.temp)" }\n')
    r = run_weir("rules", "check", d)
    assert r.returncode == 0 and "warning" not in r.stderr, r.stderr
    (d / "q.toml").write_text(
        '[[endpoint]]\nname = "late_rows"\ntype = "parquet"\n'
        '[[insight]]\nname = "with_late"\nwindow = "tumbling 1m"\naggregates = { n = "count()" }\n'
        'late = "late_rows"\n')
    r = run_weir("rules", "check", d)
    assert r.returncode == 0 and "warning" not in r.stderr, r.stderr
    (d / "q.toml").write_text(
        '[[insight]]\nname = "with_late"\nwindow = "tumbling 1m"\naggregates = { n = "count()" }\n'
        'late = "nowhere"\n')
    r = run_weir("rules", "check", d)
    assert r.returncode != 0 and "nowhere" in r.stderr, r.stderr
    (d / "q.toml").unlink()
    (d / "i.toml").write_text('[[insight]]\nname = "x"\nwindow = "tumbling 1 minute"\naggregates = { n = "count()" }\n')
    r = run_weir("rules", "check", d)
    assert r.returncode != 0 and "i.toml:3:10" in r.stderr and "unknown window" in r.stderr, r.stderr


def test_rules_test_on_shipped_fixtures_matches_golden():
    r = run_weir("rules", "test", FIX / "ok", "--events", FIX / "ok" / "events.jsonl")
    assert r.returncode == 0, r.stderr
    assert r.stdout == (FIX / "ok" / "expected.txt").read_text()
    r = run_weir("rules", "test", FIX / "ok", "--events", FIX / "ok" / "events.jsonl", "--json")
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert [x["endpoints"] for x in lines][:3] == [["hot"], ["archive"], ["hot", "alerts"]]


def test_rules_test_computes_insights_over_recorded_events(tmp_path):
    d = tmp_path / "rules"
    d.mkdir()
    (d / "i.toml").write_text(
        '[[endpoint]]\nname = "late_rows"\ntype = "parquet"\n'
        '[[insight]]\nname = "per_site"\ntime = "$body.ts"\nwindow = "tumbling 10s"\n'
        'allowed_lateness = "1s"\ngroup_by = { site = "$twin.tags.site" }\n'
        'aggregates = { n = "count()", hi = "max($body.t)" }\nlate = "late_rows"\n')
    ev = tmp_path / "ev.jsonl"
    lines = [{"deviceId": "a", "tags": {"site": "north"}, "body": {"ts": 1_000, "t": 3}},
             {"deviceId": "a", "body": {"ts": 4_000, "t": 7}},
             {"deviceId": "a", "body": {"ts": 12_500, "t": 1}},
             {"deviceId": "a", "body": {"ts": 2_000, "t": 99}}]
    ev.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    r = run_weir("rules", "test", d, "--events", ev, "--json")
    assert r.returncode == 0, r.stderr
    out = [json.loads(x) for x in r.stdout.splitlines()]
    results = [x["result"] for x in out if "result" in x]
    assert [(x["site"], x["window_start"], x["n"], x["hi"]) for x in results] == [
        ("north", "1970-01-01T00:00:00.000Z", 2, 7.0),
        ("north", "1970-01-01T00:00:10.000Z", 1, 1.0),
    ], results
    late = [x for x in out if "late" in x]
    assert len(late) == 1 and late[0]["endpoint"] == "late_rows" and late[0]["late"]["t"] == 99, out
    r = run_weir("rules", "test", d, "--events", ev)
    assert "insight per_site: " in r.stdout and "late event from a to endpoint late_rows" in r.stdout, r.stdout


def test_rules_test_reports_bad_event_lines(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"deviceId": "ok", "body": {}}\n{"deviceId": "x", "bdy": 1}\n')
    r = run_weir("rules", "test", FIX / "ok", "--events", bad)
    assert r.returncode == 1 and "bad.jsonl:2" in r.stderr


def test_hot_reload_swaps_atomically_and_keeps_old_rules_on_error(hub):
    key = hub.create_device("hr")["authentication"]["symmetricKey"]["primaryKey"]
    d = Device(hub, "hr", hub.device_token("hr", key))
    assert d.connect() == 0
    assert d.publish(d.telemetry_topic(), '{"temp": 1, "seq": 1}')

    broken = hub.rules / "zz-broken.toml"
    broken.write_text('[[route]]\nname = "x"\ncondition = "$body.temp >"\nendpoints = ["archive"]\n')
    deadline = time.time() + 10
    while "rules NOT reloaded" not in hub.log_text() and time.time() < deadline:
        time.sleep(0.1)
    log = hub.log_text()
    assert "rules NOT reloaded" in log and "zz-broken.toml:3:" in log
    assert d.publish(d.telemetry_topic(), '{"temp": 2, "seq": 2}')
    hub.wait_rows("archive", 2)

    broken.write_text(
        '[[endpoint]]\nname = "cold"\ntype = "parquet"\n'
        '[[route]]\nname = "cold"\ncondition = "$body.temp < 0"\nendpoints = ["cold"]\n'
    )
    deadline = time.time() + 10
    while hub.metrics()["weir_rules_reloads_total"] < 1 and time.time() < deadline:
        time.sleep(0.1)
    assert hub.metrics()["weir_rules_reloads_total"] >= 1
    assert d.publish(d.telemetry_topic(), '{"temp": -5, "seq": 3}')
    assert hub.wait_rows("cold", 1) == 1
    assert hub.query("cold", "SELECT body FROM t") == [('{"temp": -5, "seq": 3}',)]
    d.close()


def test_default_rules_dir_is_created_with_the_example(tmp_path):
    from weirhub import Hub
    h = Hub(tmp_path, tmp_path / "unused")
    h.start_args = None
    # Run without --rules from an empty directory: ./rules is created from the shipped example.
    import subprocess
    proc = subprocess.Popen(
        [str(run_weir.__globals__["WEIR"]), "serve", "--data-dir", str(tmp_path / "d"), "--mqtt", "off",
         "--mqtts", "off", "--http", f"127.0.0.1:{h.http_port}"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.time() + 20
        while not (tmp_path / "rules" / "example.toml").exists() and time.time() < deadline:
            time.sleep(0.05)
        assert (tmp_path / "rules" / "example.toml").read_text() == (ROOT / "rules" / "example.toml").read_text()
    finally:
        proc.terminate()
        assert proc.wait(20) == 0
