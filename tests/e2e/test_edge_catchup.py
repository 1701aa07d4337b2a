"""Catch-up after an outage with live messages flowing (`[upstream] catchup_share`): what
was queued when the link came back is the backlog; messages that arrive after it get the
rest of the link. With a share of 1 (the default) the backlog goes first and every
device's messages reach the hub in order; with 0.2 live messages reach the hub while the
backlog is still draining. Either way everything arrives exactly once, each lane in order.
The hub's log offsets say in which order the hub received messages."""

import json
import time

import pytest
from conftest import run_weir
from rawmqtt import Raw
from edgehub import EDGE_RULES, HUB_RULES, Proxy, make_hub, put_device, start_edge, wait_for

DEVICES, PER_DEVICE, LIVE = 20, 2500, 20


@pytest.mark.parametrize("share", [1.0, 0.2])
def test_catch_up_shares_the_link_with_live_messages(tmp_path, share):
    hub = make_hub(tmp_path, "hub", HUB_RULES, hostname="hub.test").start()
    proxy = Proxy(hub.mqtts_port)
    edge = None
    try:
        e = put_device(hub, "edge1", {"capabilities": {"iotEdge": True}})
        key = put_device(hub, "live1", {"parentScopes": [e["deviceScope"]]})["authentication"]["symmetricKey"]["primaryKey"]
        edge = start_edge(tmp_path, hub, e, EDGE_RULES, port=proxy.port,
                          settings=f"catchup_share = {share}", children=["live1"])
        live = Raw(edge.mqtt_port, timeout=10)
        assert live.connect("live1", edge.username("live1"), edge.device_token("live1", key)) == 0

        # The link goes down; devices at the edge build a backlog.
        proxy.set("closed")
        wait_for(lambda: not edge.call("GET", "/upstream").json()["connected"], "the link stayed up")
        r = run_weir("simulate", "--api", edge.api, "--data-dir", edge.data, "--mqtt", f"127.0.0.1:{edge.mqtt_port}",
                     "--devices", str(DEVICES), "--messages", str(PER_DEVICE), "--quiet",
                     "--payload", '{"seq": {{seq}}}')
        assert r.returncode == 0, r.stderr
        backlog = DEVICES * PER_DEVICE
        wait_for(lambda: edge.call("GET", "/upstream").json()["backlogMessages"] == backlog, "the backlog is short")

        # The link comes back; a child publishes while the backlog drains.
        proxy.set("pass")
        wait_for(lambda: edge.call("GET", "/upstream").json()["connected"], "the link did not come back", timeout=30)
        waiting = []
        for i in range(LIVE):
            assert live.publish(f"devices/live1/messages/events/%24.mid=live-{i}", json.dumps({"i": i}).encode(),
                                pkid=i + 1) == i + 1
            waiting.append(edge.call("GET", "/upstream").json()["backlogMessages"])
            time.sleep(0.01)
        # The live messages were published during catch-up, not after it.
        assert waiting[0] > backlog // 4, waiting

        hub.wait_rows("archive", backlog + LIVE, timeout=120)
        wait_for(lambda: edge.call("GET", "/upstream").json()["backlogMessages"] == 0, "the edge did not catch up")
        offsets = dict(hub.query("archive", """
            SELECT device_id, list(ingest_offset ORDER BY ingest_offset) FROM t GROUP BY 1"""))
        live_offsets, backlog_offsets = offsets["live1"], offsets["edge1"]
        assert len(live_offsets) == LIVE and len(backlog_offsets) == backlog
        # Each lane in order, exactly once.
        rows = hub.query("archive", """
            SELECT properties['weir-device'], list(CAST(json_extract(body, '$.seq') AS BIGINT) ORDER BY ingest_offset)
            FROM t WHERE device_id = 'edge1' GROUP BY 1""")
        assert len(rows) == DEVICES and all(seq == list(range(PER_DEVICE)) for _, seq in rows)
        got = [x[0] for x in hub.query("archive", "SELECT CAST(json_extract(body, '$.i') AS BIGINT) FROM t "
                                                  "WHERE device_id = 'live1' ORDER BY ingest_offset")]
        assert got == list(range(LIVE))
        # When the edge took each message travels with it: it says the live messages are
        # the newest, whichever order they reached the hub in.
        times = dict(hub.query("archive", """
            SELECT device_id, [min(CAST(properties['weir-edge-enqueued'] AS BIGINT)),
                               max(CAST(properties['weir-edge-enqueued'] AS BIGINT)), count(properties['weir-edge-enqueued'])]
            FROM t GROUP BY 1"""))
        assert times["edge1"][2] == backlog and times["live1"][2] == LIVE, times
        assert times["live1"][0] >= times["edge1"][1], times
        if share == 1.0:
            # The backlog first: every live message after the whole backlog.
            assert min(live_offsets) > max(backlog_offsets)
        else:
            # Live messages did not wait for the backlog: all of them reached the hub
            # before it had the backlog's last quarter.
            assert max(live_offsets) < sorted(backlog_offsets)[backlog * 3 // 4], (live_offsets[-1], max(backlog_offsets))
    finally:
        proxy.close()
        if edge:
            edge.stop()
        hub.stop()
