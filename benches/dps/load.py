"""Registrations per second against Weir's provisioning service: N devices of one
symmetric-key enrollment group register over MQTT/TLS (raw paho clients speaking IoT DPS's
protocol, as the SDK does, C at a time), each creating its device on a linked hub through
the hub's REST API. Also times SAS and X.509 connects to the hub for comparison.

    python benches/dps/load.py [N] [C]     # run by benches/dps.sh
"""

import base64
import hashlib
import hmac
import json
import os
import ssl
import sys
import tempfile
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
os.environ.setdefault("WEIR_BIN", str(ROOT / "target" / "release" / "weir"))

import paho.mqtt.client as paho  # noqa: E402
import requests  # noqa: E402

from weirhub import Hub, sas_token  # noqa: E402

N = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
C = int(sys.argv[2]) if len(sys.argv) > 2 else 16
RULES = '[[endpoint]]\nname = "archive"\ntype = "parquet"\n\n[[route]]\nname = "all"\ncondition = "true"\nendpoints = ["archive"]\n'


def derived(group_key, reg):
    return base64.b64encode(hmac.new(base64.b64decode(group_key), reg.encode(), hashlib.sha256).digest()).decode()


def register(dps_ip, port, ca, scope, reg, key):
    done = threading.Event()
    got = {}
    c = paho.Client(client_id=reg, protocol=paho.MQTTv311, clean_session=False)
    sr = f"{scope}/registrations/{reg}"
    c.username_pw_set(f"{scope}/registrations/{reg}/api-version=2019-03-31",
                      sas_token(sr, key, int(time.time()) + 3600))
    c.tls_set(ca_certs=ca, tls_version=ssl.PROTOCOL_TLSv1_2)

    def on_connect(cl, u, f, rc):
        if rc != 0:
            got["rc"] = rc
            done.set()
            return
        cl.subscribe("$dps/registrations/res/#", 1)
        body = json.dumps({"payload": None, "registrationId": reg}, sort_keys=True)
        cl.publish("$dps/registrations/PUT/iotdps-register/?$rid=1", body, 1)

    def on_message(cl, u, m):
        got["status"] = m.topic.split("/")[3]
        got["body"] = json.loads(m.payload)
        done.set()

    c.on_connect, c.on_message = on_connect, on_message
    c.connect(dps_ip, port, 60)
    c.loop_start()
    ok = done.wait(30)
    c.disconnect()
    c.loop_stop()
    assert ok and got.get("status") == "200", got
    return got["body"]["registrationState"]["assignedHub"]


def main():
    work = Path(tempfile.mkdtemp())
    (work / "rules").mkdir()
    (work / "rules" / "rules.toml").write_text(RULES)
    (work / "hub").mkdir()
    (work / "dps").mkdir()
    hub = Hub(work / "hub", work / "rules", hostname="127.0.0.3", ip="127.0.0.3").start()
    dps = Hub(work / "dps", work / "rules", hostname="127.0.0.2", ip="127.0.0.2", config=f"""
[dps]
enabled = true
[[dps.hub]]
hostname = "127.0.0.3"
api = "{hub.api}"
connection_string = "{hub.service_connection_string()}"
""").start()
    try:
        key = (dps.data / "provisioningserviceowner.connstr").read_text().strip().split("SharedAccessKey=")[1]
        auth = {"Authorization": sas_token(dps.hostname, key, int(time.time()) + 3600, "provisioningserviceowner")}
        api = f"{dps.api}/%s?api-version=2021-10-01"
        scope = requests.get(api % "provisioning", headers=auth).json()["idScope"]
        r = requests.put(api % "enrollmentGroups/bench", json={"attestation": {"type": "symmetricKey"}}, headers=auth)
        group_key = r.json()["attestation"]["symmetricKey"]["primaryKey"]
        regs = [f"bench-{i}" for i in range(N)]
        start = time.time()
        with ThreadPoolExecutor(C) as pool:
            hubs = list(pool.map(lambda reg: register("127.0.0.2", dps.mqtts_port, dps.ca, scope, reg,
                                                      derived(group_key, reg)), regs))
        took = time.time() - start
        assert set(hubs) == {"127.0.0.3"}
        devices = len(requests.get(f"{hub.api}/devices?api-version=2021-04-12", headers=hub.service_headers()).json())
        assert devices == N, devices
        print(json.dumps({"registrations": N, "concurrency": C, "seconds": round(took, 2),
                          "per_second": round(N / took, 1)}))
    finally:
        dps.stop()
        hub.stop()


if __name__ == "__main__":
    main()
