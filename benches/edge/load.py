"""Edge forwarding benchmarks (release build, loopback): a hub and an edge with `[upstream]`,
100 children of the edge publishing through `weir simulate` to the edge.

1. Live forwarding over one upstream connection, MQTT/TLS and QUIC: every child message
   goes edge log -> upstream queue -> one link -> hub log -> hub archive. Reports the
   edge's ingest rate (simulate) and the end-to-end rate until the hub acknowledged all.
2. Store and forward: the hub is down while the children publish at RATE msg/s for SECS
   seconds; then the hub starts and the edge catches up. Reports the backlog (messages,
   bytes), the edge's RSS at that backlog, and the catch-up time and rate.

    python benches/edge/load.py            # run by benches/edge.sh (RATE, SECS, MSGS)
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
os.environ.setdefault("WEIR_BIN", str(ROOT / "target" / "release" / "weir"))

import requests  # noqa: E402

from weirhub import WEIR, Hub, free_port  # noqa: E402

DEVICES = 100
RATE = float(os.environ.get("RATE", "20000"))
SECS = float(os.environ.get("SECS", "60"))
MSGS = int(os.environ.get("MSGS", "2000"))
HUB_RULES = '[[endpoint]]\nname = "archive"\ntype = "parquet"\n\n[[route]]\nname = "all"\ncondition = "true"\nendpoints = ["archive"]\n'
EDGE_RULES = '[[endpoint]]\nname = "hub"\ntype = "upstream"\n\n[[route]]\nname = "up"\ncondition = "true"\nendpoints = ["hub"]\n'


def make(base, name, rules, **kw):
    work = base / name
    work.mkdir(parents=True)
    (work / "rules").mkdir()
    (work / "rules" / "rules.toml").write_text(rules)
    return Hub(work, work / "rules", **kw)


def rss_mib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def upstream(edge):
    return requests.get(edge.api + "/upstream", headers=edge.service_headers(), timeout=10).json()


def setup(base, transport, hub_running=True):
    hub = make(base, "hub", HUB_RULES, hostname="hub.bench",
               config='[archive]\nmax_age_secs = 5\n', fixed_ports={"https": free_port()})
    hub.start()
    e = hub.call("PUT", "/devices/edge1", {"deviceId": "edge1", "capabilities": {"iotEdge": True}}).json()
    for i in range(DEVICES):
        r = hub.call("PUT", f"/devices/sim-{i:04}", {"deviceId": f"sim-{i:04}", "parentScopes": [e["deviceScope"]]})
        assert r.status_code == 200, r.text
    port = {"quic": hub.quic_port, "websocket": hub.https_port}.get(transport, hub.mqtts_port)
    config = f"""
[upstream]
hub = "hub.bench"
device_id = "edge1"
key = "{e["authentication"]["symmetricKey"]["primaryKey"]}"
transport = "{transport}"
address = "127.0.0.1:{port}"
ca = "{hub.ca}"
budget_mb = 8192
"""
    edge = make(base, "edge", EDGE_RULES, hostname="edge.bench", config=config).start()
    deadline = time.time() + 30
    while edge.call("GET", f"/devices/sim-{DEVICES - 1:04}").status_code != 200:
        assert time.time() < deadline, "children did not reach the edge"
        time.sleep(0.2)
    if not hub_running:
        hub.stop()
    return hub, edge


def simulate(edge, *extra):
    cmd = [str(WEIR), "simulate", "--api", edge.api, "--data-dir", str(edge.data),
           "--mqtt", f"127.0.0.1:{edge.mqtt_port}", "--devices", str(DEVICES), "--qos", "1",
           "--inflight", "64", "--json", *map(str, extra)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def live(base, transport):
    hub, edge = setup(base / f"live-{transport}", transport)
    try:
        start = time.time()
        report = simulate(edge, "--messages", MSGS, "--quiet")
        total = DEVICES * MSGS
        while upstream(edge)["forwarded"] < total:
            time.sleep(0.05)
        elapsed = time.time() - start
        return {"transport": transport, "messages": total,
                "edge_ingest_per_s": round(report["publish_rate"]),
                "end_to_end_per_s": round(total / elapsed)}
    finally:
        edge.stop()
        hub.stop()


def backlog(base, transport):
    hub, edge = setup(base / f"backlog-{transport}", transport, hub_running=False)
    try:
        report = simulate(edge, "--messages", 0, "--duration", SECS, "--rate", RATE)
        time.sleep(1)
        up = upstream(edge)
        rss = rss_mib(edge.proc.pid)
        start = time.time()
        hub.start()
        while upstream(edge)["backlogMessages"] > 0:
            time.sleep(0.2)
        catch_up = time.time() - start
        return {"transport": transport, "rate_asked": RATE, "secs": SECS,
                "published": report["acked"], "publish_rate": round(report["publish_rate"]),
                "backlog_messages": up["backlogMessages"],
                "backlog_mib": round(up["backlogBytes"] / 1048576, 1), "edge_rss_mib": round(rss),
                "catch_up_secs": round(catch_up, 1),
                "catch_up_per_s": round(up["backlogMessages"] / catch_up)}
    finally:
        edge.stop()
        hub.stop()


def main():
    import tempfile
    with tempfile.TemporaryDirectory(prefix="weir-edge-bench-") as d:
        base = Path(d)
        which = os.environ.get("ONLY", "live,backlog").split(",")
        for transport in os.environ.get("TRANSPORTS", "mqtts,quic").split(","):
            if "live" in which:
                print(json.dumps(live(base, transport)), flush=True)
            if "backlog" in which:
                print(json.dumps(backlog(base, transport)), flush=True)


if __name__ == "__main__":
    main()
