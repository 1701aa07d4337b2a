"""Connections at scale, Weir and mosquitto in the same run (see benches/scale.sh).

idle-weir: the first of these alone (Weir, plain).
idle:  N idle authenticated plain connections (spread over 127.0.0.2-... source
       addresses); RSS per connection = (RSS with them - RSS before) / N. Also over TLS
       with TLS_IDLE connections.
cluster: CLUSTER_PROCS processes of one cluster (--process/--hosts, one worker each),
       CLUSTER_PER idle plain connections each from its own `weir simulate` (one process
       holds at most RLIMIT_NOFILE connections, 20 000 here): all connected at once, RSS
       per connection per process.
throughput: THRU_PUBS publishers, THRU_MSGS messages each (QoS 1, then 0), against one
       process with one worker, with THRU_WORKERS workers, and a cluster of two processes
       (half the workers each, half the publishers on each): messages per second until every row is in a
       committed Parquet file on some process.
cluster-storm: STORM_PROCS processes of one cluster, STORM_PER TLS devices each (one
       `weir simulate --storm` per process, all dropping together through --drop-when),
       then mosquitto (TLS) with STORM_MOSQ devices, its most in one process here.
storm: STORM devices connect over TLS, then every connection drops at once and all
       reconnect at once, retrying with backoff when refused; time until all are back,
       the server's peak RSS, and, meanwhile, publish->PUBACK latency of 10 devices that
       were connected before (plain MQTT, QoS 1, 200 msg/s) on Weir.
Prints one JSON line per measurement."""

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
from weirhub import Hub, free_port  # noqa: E402

WEIR = ROOT / "target" / "release" / "weir"
# One process holds at most RLIMIT_NOFILE connections: 100 k needs a hard limit above
# that, which a process may raise only with CAP_SYS_RESOURCE (weir serve tries).
IDLE = int(os.environ.get("IDLE", "18000"))
TLS_IDLE = int(os.environ.get("TLS_IDLE", "10000"))
STORM = int(os.environ.get("STORM", "18000"))
SOURCES = os.environ.get("SOURCES", "127.0.0.2-127.0.0.41")
PROBE_SECS = int(os.environ.get("PROBE_SECS", "40"))
ONLY = os.environ.get("ONLY", "idle,storm").split(",")
CLUSTER_PROCS = int(os.environ.get("CLUSTER_PROCS", "6"))
CLUSTER_PER = int(os.environ.get("CLUSTER_PER", "16700"))
# Which processes get connections (all by default): with some left out, their growth is
# what devices connected elsewhere cost them.
CLUSTER_ON = [int(i) for i in os.environ.get("CLUSTER_ON", ",".join(map(str, range(CLUSTER_PROCS)))).split(",")]
STORM_PROCS = int(os.environ.get("STORM_PROCS", "3"))
STORM_PER = int(os.environ.get("STORM_PER", "16700"))
STORM_MOSQ = int(os.environ.get("STORM_MOSQ", "18000"))
STORM_RATE = int(os.environ.get("STORM_RATE", "0"))
IDLE_CPU_SECS = int(os.environ.get("IDLE_CPU_SECS", "20"))
THRU_PUBS = int(os.environ.get("THRU_PUBS", "100"))
THRU_MSGS = int(os.environ.get("THRU_MSGS", "10000"))
THRU_WORKERS = int(os.environ.get("THRU_WORKERS", "2"))
RULES = '[[endpoint]]\nname = "archive"\ntype = "parquet"\n\n[[route]]\nname = "all"\ncondition = "true"\nendpoints = ["archive"]\n'


def status(pid, key):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def weir_hub(base, connect_rate):
    work = base / f"hub-{time.monotonic_ns()}"
    (work / "rules").mkdir(parents=True)
    (work / "rules" / "rules.toml").write_text(RULES)
    config = f"[mqtt]\nmax_connections = {max(IDLE, STORM) + 10000}\nmax_pending_connections = 4096\nconnect_rate = {connect_rate}\n"
    # Settings to try against the defaults (`EXTRA_CONFIG='[dedupe]\nwindow_secs = 0'`).
    config += os.environ.get("EXTRA_CONFIG", "").replace("\\n", "\n")
    # The release build, with its log at warn: 100 k connection lines are not the point.
    hub = Hub(work, work / "rules", config=config)
    hub.config_path.write_text(hub.config_path.read_text().replace('level = "info"', 'level = "warn"'))
    return hub


def simulate(*args, background=False):
    cmd = [str(WEIR), "simulate", *map(str, args), "--quiet", "--json"]
    if background:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise SystemExit(f"simulate {args} failed: {r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def register(hub, n, prefix):
    t0 = time.time()
    r = subprocess.run([str(WEIR), "simulate", *map(str, hub_args(hub)), "--devices", str(n), "--prefix", prefix,
                        "--register-only", "--quiet"], capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise SystemExit(f"registering {n} devices failed: {r.stderr[-2000:]}")
    took = time.time() - t0
    print(json.dumps({"server": "weir", "test": "register", "devices": n, "seconds": took, "per_s": n / took}), flush=True)


def register_each(hubs, n, prefix, only=None):
    """Every process (of `only`, when given) registers its own `n` devices (`{prefix}{i}-…`)
    at the same time; the registry carries each device to every process."""
    t0 = time.time()
    regs = [subprocess.Popen([str(WEIR), "simulate", *map(str, hub_args(h)), "--devices", str(n),
                              "--prefix", f"{prefix}{i}-", "--register-only", "--quiet"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            for i, h in enumerate(hubs) if only is None or i in only]
    for r in regs:
        _, err = r.communicate(timeout=1800)
        if r.returncode != 0:
            raise SystemExit(f"registering failed: {err[-2000:]}")
    took = time.time() - t0
    print(json.dumps({"server": "weir", "test": "register", "processes": len(regs), "devices": n * len(regs),
                      "seconds": took, "per_s": n * len(regs) / took}), flush=True)


def replicated(hubs, total, limit=600):
    """Waits until every process holds all `total` devices, then until their RSS stops
    growing: registry changes reach the other processes through the cluster's dataflow
    after the API has answered, and a baseline taken before they are applied would count
    the registry as connection memory."""
    t0 = time.time()
    while time.time() - t0 < limit:
        counts = [h.metric("weir_devices_registered") for h in hubs]
        if all(c >= total for c in counts):
            break
        time.sleep(1)
    else:
        raise SystemExit(f"the registry did not reach every process: {counts} of {total}")
    before = None
    while time.time() - t0 < limit:
        now = [status(h.proc.pid, "VmRSS") for h in hubs]
        if before and all(abs(a - b) <= 0.002 * b for a, b in zip(now, before)):
            return now
        before = now
        time.sleep(3)
    return before


def hub_args(hub, transport="tcp"):
    return ["--api", hub.api, "--data-dir", hub.data, "--mqtt", f"127.0.0.1:{hub.mqtt_port}",
            "--mqtts", f"127.0.0.1:{hub.mqtts_port}", "--transport", transport]


def wait_connected(pid_alive, read, n, limit=600):
    t0 = last = time.time()
    while time.time() - t0 < limit:
        got = read()
        if got >= n:
            return time.time() - t0
        if time.time() - last >= 10:
            last = time.time()
            print(f"  {got:.0f} of {n} after {last - t0:.0f} s", file=sys.stderr, flush=True)
        if not pid_alive():
            break
        time.sleep(0.5)
    return None


def idle_cost(server_pid, sim_args, n, connected):
    time.sleep(1)
    before = status(server_pid, "VmRSS")
    sim = simulate(*sim_args, "--devices", n, "--idle", "--duration", 600, "--source-ips", SOURCES, background=True)
    took = wait_connected(lambda: sim.poll() is None, connected, n)
    time.sleep(3)
    after = status(server_pid, "VmRSS")
    sim.terminate()
    sim.wait(30)
    return {"connections": n, "connect_seconds": took, "rss_before_kib": before, "rss_after_kib": after,
            "kib_per_connection": (after - before) / n}


def weir_idle_plain(hub):
    register(hub, IDLE, "idle-")
    r = idle_cost(hub.proc.pid, [*hub_args(hub), "--prefix", "idle-"], IDLE,
                  lambda: hub.metric("weir_devices_connected"))
    print(json.dumps({"server": "weir", "test": "idle plain", **r}), flush=True)


def mosquitto(base, tls):
    port = free_port()
    conf = base / f"mosquitto-{port}.conf"
    lines = [f"listener {port} 127.0.0.1", "allow_anonymous true", "user root", "set_tcp_nodelay true",
             "max_inflight_messages 1000", "persistence false", "log_dest none", "max_connections -1"]
    if tls:
        lines += [f"cafile {tls}/ca.pem", f"certfile {tls}/server.pem", f"keyfile {tls}/server.key"]
    conf.write_text("\n".join(lines) + "\n")
    p = subprocess.Popen(["mosquitto", "-c", str(conf)])
    time.sleep(0.5)
    return p, port


def mosquitto_connections(port):
    # mosquitto counts clients in $SYS every 10 s by default; count established sockets instead.
    out = subprocess.run(["ss", "-Htn", "state", "established", f"( sport = :{port} )"],
                         capture_output=True, text=True).stdout
    return len(out.splitlines())


def stop_all(hubs):
    """Signals every process first: a cluster's dataflow ends once every log has closed."""
    for h in hubs:
        if h.proc and h.proc.poll() is None:
            h.signal_hub(15)
    for h in hubs:
        try:
            h.proc.wait(60)
        except subprocess.TimeoutExpired:
            h.proc.kill()


def cluster_hubs(base, procs, workers, connect_rate=0):
    """`procs` hubs (not started) of one cluster on loopback, `workers` each; one alone."""
    hosts = base / f"hosts-{time.monotonic_ns()}"
    hosts.write_text("".join(f"127.0.0.1:{free_port()}\n" for _ in range(procs)))
    hubs = []
    for i in range(procs):
        hub = weir_hub(base, connect_rate)
        hub.workers = workers
        if procs > 1:
            hub.extra_args = ["--process", str(i), "--hosts", str(hosts)]
        hubs.append(hub)
    return hubs


def cluster_idle(base):
    """CLUSTER_PROCS processes of one cluster, CLUSTER_PER idle connections on each, all
    held at the same time; each simulator uses its own range of source addresses."""
    hubs = cluster_hubs(base, CLUSTER_PROCS, 1)
    sims = []
    try:
        for h in hubs:
            h.start()
        register_each(hubs, CLUSTER_PER, "c", CLUSTER_ON)
        rss_before = replicated(hubs, len(CLUSTER_ON) * CLUSTER_PER)
        for i, h in enumerate(hubs):
            if i not in CLUSTER_ON:
                continue
            first = 2 + i * 40
            sims.append(simulate(*hub_args(h), "--prefix", f"c{i}-", "--devices", CLUSTER_PER, "--idle",
                                 "--duration", 900, "--source-ips", f"127.0.1.{first}-127.0.1.{first + 39}",
                                 background=True))
        total = len(sims) * CLUSTER_PER
        took = wait_connected(lambda: all(s.poll() is None for s in sims),
                              lambda: sum(h.metric("weir_devices_connected") for h in hubs), total, limit=900)
        for _ in range(int(os.environ.get("SETTLE_SECS", "5"))):
            time.sleep(1)
            print("  rss", [status(h.proc.pid, "VmRSS") for h in hubs], file=sys.stderr, flush=True)
        connected = sum(h.metric("weir_devices_connected") for h in hubs)
        rss_after = [status(h.proc.pid, "VmRSS") for h in hubs]
        per = [(a - b) / CLUSTER_PER for a, b in zip(rss_after, rss_before)]
        print(json.dumps({"server": "weir", "test": "idle plain cluster", "processes": CLUSTER_PROCS,
                          "connections": int(connected), "connect_seconds": took,
                          "rss_after_kib": rss_after, "kib_per_connection": per,
                          "total_rss_mib": sum(rss_after) / 1024}), flush=True)
    finally:
        for s in sims:
            s.terminate()
        for s in sims:
            try:
                s.wait(60)
            except subprocess.TimeoutExpired:
                s.kill()
        stop_all(hubs)


def cpu_ticks(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def idle_cpu(base):
    """CPU an idle hub uses, alone and in clusters of 2 and 3 (no devices, no load): what a
    cluster's clock and progress traffic cost while nothing happens."""
    hz = os.sysconf("SC_CLK_TCK")
    for procs in (1, 2, 3):
        hubs = cluster_hubs(base, procs, 1)
        try:
            for h in hubs:
                h.start()
            time.sleep(10)
            before = [cpu_ticks(h.proc.pid) for h in hubs]
            time.sleep(IDLE_CPU_SECS)
            after = [cpu_ticks(h.proc.pid) for h in hubs]
            pct = [round(100 * (a - b) / hz / IDLE_CPU_SECS, 1) for a, b in zip(after, before)]
            print(json.dumps({"server": "weir", "test": "idle cpu", "processes": procs,
                              "seconds": IDLE_CPU_SECS, "cpu_percent_of_a_core": pct}), flush=True)
        finally:
            stop_all(hubs)


def cluster_storm(base):
    """STORM_PROCS processes, STORM_PER TLS devices on each, one storm for all of them;
    each process registers its own devices and the registry carries them to the others."""
    hubs = cluster_hubs(base, STORM_PROCS, 1, STORM_RATE)
    sims, probe = [], None
    drop = base / f"drop-{time.monotonic_ns()}"
    try:
        for h in hubs:
            h.config_path.write_text(h.config_path.read_text().replace('level = "warn"', 'level = "info"'))
            h.start()
        for h in hubs:
            assert h.wait_log("cluster dataflow running", timeout=60), h.log_text()[-2000:]
        t0 = time.time()
        register_each(hubs, STORM_PER, "s")
        register(hubs[0], 10, "probe-")
        total = STORM_PROCS * STORM_PER
        replicated = wait_connected(lambda: True, lambda: min(h.metric("weir_devices_registered") for h in hubs),
                                    total + 10, limit=300)
        print(json.dumps({"server": "weir", "test": "cluster register", "devices": total,
                          "seconds": time.time() - t0, "every_process_has_all_after": replicated}), flush=True)
        for i, h in enumerate(hubs):
            first = 2 + i * 40
            sims.append(simulate(*hub_args(h, "tls"), "--prefix", f"s{i}-", "--devices", STORM_PER, "--storm",
                                 "--duration", 2, "--drop-when", drop,
                                 "--source-ips", f"127.0.2.{first}-127.0.2.{first + 39}", background=True))
        took = wait_connected(lambda: all(s.poll() is None for s in sims),
                              lambda: sum(h.metric("weir_devices_connected") for h in hubs), total, limit=900)
        rss_before = [status(h.proc.pid, "VmRSS") for h in hubs]
        # Devices connected before the storm publish through it.
        probe = simulate(*hub_args(hubs[0]), "--devices", 10, "--prefix", "probe-", "--messages", 0,
                         "--duration", PROBE_SECS, "--rate", 200, background=True)
        time.sleep(3)
        drop.touch()
        reports = []
        for s in sims:
            out, err = s.communicate(timeout=900)
            lines = out.strip().splitlines()
            reports.append(json.loads(lines[-1]) if lines else {"error": err[-500:]})
        out, _ = probe.communicate(timeout=PROBE_SECS + 60)
        lines = out.strip().splitlines()
        latency = json.loads(lines[-1]).get("latency_ms") if lines else None
        backs = [r.get("storm_seconds") for r in reports]
        print(json.dumps({"server": "weir", "test": "tls storm cluster", "processes": STORM_PROCS,
                          "connect_rate": STORM_RATE, "devices": total, "first_connect_seconds": took,
                          "all_back_seconds": max(backs) if None not in backs else None,
                          "per_process_back_seconds": backs,
                          "throttled": sum(r.get("storm_throttled", 0) for r in reports),
                          "failed": sum(r.get("storm_failed", 0) for r in reports),
                          "lost_after_connack": sum(r.get("lost", 0) for r in reports),
                          "rss_connected_kib": rss_before,
                          "peak_rss_kib": [status(h.proc.pid, "VmHWM") for h in hubs],
                          "probe_latency_ms": latency}), flush=True)
    finally:
        for s in [*sims, probe]:
            if s is not None and s.poll() is None:
                s.kill()
        stop_all(hubs)
    mosquitto_tls_storm(base, STORM_MOSQ)


def mosquitto_tls_storm(base, n):
    """The same TLS storm against mosquitto, with a Weir hub's development certificate."""
    hub = weir_hub(base, 0).start()
    tls_dir = Path(hub.data) / "tls"
    mq, port = mosquitto(base, tls_dir)
    try:
        storm = simulate("--broker", "--mqtts", f"127.0.0.1:{port}", "--transport", "tls", "--ca",
                         tls_dir / "ca.pem", "--devices", n, "--prefix", "storm-", "--storm",
                         "--duration", 2, "--source-ips", SOURCES)
        print(json.dumps({"server": "mosquitto", "test": "tls storm", **storm,
                          "peak_rss_kib": status(mq.pid, "VmHWM")}), flush=True)
    finally:
        mq.terminate()
        hub.stop()


def throughput(base, procs, qos, workers):
    """THRU_PUBS publishers spread over `procs` processes (1: alone)."""
    hubs = cluster_hubs(base, procs, workers)
    for hub in hubs:
        # At info: the cluster says when its dataflow runs.
        hub.config_path.write_text(hub.config_path.read_text().replace('level = "warn"', 'level = "info"'))
    try:
        for h in hubs:
            h.start()
        if procs > 1:
            for h in hubs:
                assert h.wait_log("cluster dataflow running", timeout=60), h.log_text()[-2000:]
        per = THRU_PUBS // procs
        for i, h in enumerate(hubs):
            register(h, per, f"t{i}-")
        total = per * procs * THRU_MSGS
        t0 = time.time()
        sims = [simulate(*hub_args(h), "--prefix", f"t{i}-", "--devices", per, "--messages", THRU_MSGS,
                         "--qos", qos, background=True) for i, h in enumerate(hubs)]
        for s in sims:
            s.communicate(timeout=900)
        published = time.time() - t0
        archived = wait_connected(lambda: True, lambda: sum(h.metric("weir_archive_rows_total") for h in hubs),
                                  total, limit=600)
        took = time.time() - t0
        print(json.dumps({"server": "weir", "test": "throughput", "processes": procs,
                          "workers_each": hubs[0].workers, "qos": qos, "messages": total,
                          "published_per_s": total / published,
                          "archived_per_s": total / took if archived is not None else None}), flush=True)
    finally:
        stop_all(hubs)


def main():
    with tempfile.TemporaryDirectory(prefix="weir-scale-") as d:
        base = Path(d)
        if "throughput" in ONLY:
            for qos in (1, 0):
                # One worker, two workers, two processes of one worker.
                for procs, workers in ((1, 1), (1, THRU_WORKERS), (2, max(1, THRU_WORKERS // 2))):
                    throughput(base, procs, qos, workers)
        if "cluster" in ONLY:
            cluster_idle(base)
        if "idle-cpu" in ONLY:
            idle_cpu(base)
        if "cluster-storm" in ONLY:
            cluster_storm(base)
        if "idle-weir" in ONLY:
            # Weir's plain idle figure alone: the quick loop while working on it.
            hub = weir_hub(base, 0).start()
            try:
                weir_idle_plain(hub)
            finally:
                hub.stop()
        if "idle" in ONLY:
            hub = weir_hub(base, 0).start()
            try:
                weir_idle_plain(hub)
                r = idle_cost(hub.proc.pid, [*hub_args(hub, "tls"), "--prefix", "idle-"], TLS_IDLE,
                              lambda: hub.metric("weir_devices_connected"))
                print(json.dumps({"server": "weir", "test": "idle tls", **r}), flush=True)
                tls_dir = Path(hub.data) / "tls"
                mq, port = mosquitto(base, None)
                try:
                    r = idle_cost(mq.pid, ["--broker", "--mqtt", f"127.0.0.1:{port}", "--prefix", "idle-"], IDLE,
                                  lambda: mosquitto_connections(port))
                    print(json.dumps({"server": "mosquitto", "test": "idle plain", **r}), flush=True)
                finally:
                    mq.terminate()
                mq, port = mosquitto(base, tls_dir)
                try:
                    r = idle_cost(mq.pid, ["--broker", "--mqtts", f"127.0.0.1:{port}", "--transport", "tls",
                                           "--ca", tls_dir / "ca.pem", "--prefix", "idle-"], TLS_IDLE,
                                  lambda: mosquitto_connections(port))
                    print(json.dumps({"server": "mosquitto", "test": "idle tls", **r}), flush=True)
                finally:
                    mq.terminate()
            finally:
                hub.stop()
        if "storm" in ONLY:
            for rate in (int(x) for x in os.environ.get("RATES", "2000,0").split(",")):
                hub = weir_hub(base, rate).start()
                try:
                    register(hub, STORM, "storm-")
                    # Devices connected before the storm keep publishing through it.
                    probe = simulate(*hub_args(hub), "--devices", 10, "--prefix", "probe-", "--messages", 0,
                                     "--duration", PROBE_SECS, "--rate", 200, background=True)
                    storm = simulate(*hub_args(hub, "tls"), "--devices", STORM, "--prefix", "storm-", "--storm",
                                     "--duration", 2, "--source-ips", SOURCES)
                    out, _ = probe.communicate(timeout=PROBE_SECS + 60)
                    lines = out.strip().splitlines()
                    latency = json.loads(lines[-1])["latency_ms"] if lines else None
                    print(json.dumps({"server": "weir", "test": "tls storm", "connect_rate": rate, **storm,
                                      "peak_rss_kib": status(hub.proc.pid, "VmHWM"),
                                      "probe_latency_ms": latency}), flush=True)
                finally:
                    hub.stop()
            mosquitto_tls_storm(base, STORM)


if __name__ == "__main__":
    main()
