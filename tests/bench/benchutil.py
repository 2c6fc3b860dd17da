#!/usr/bin/python3
"""benchutil.py - small helpers shared by the benchmark scripts (stdlib only).

    benchutil.py machine                      machine description, one "key: value" a line
    benchutil.py wrk FILE                     parse `wrk --latency` output: "rps p50_ms p99_ms non2xx errors"
    benchutil.py metric URL NAME [LABEL=V..]  sum of a Prometheus sample (all matching series); 0 if absent
    benchutil.py stages URL                   per-stage latency (p50/p99 estimated from the histogram buckets)
    benchutil.py sqlcount DB SQL              one integer from a read-only sqlite query (0 if table missing)
    benchutil.py free-port                    a free TCP port on 127.0.0.1
    benchutil.py fill URL N WRKPID LIMIT      SIGINT wrk once http_requests_202 >= N; print "count seconds"
    benchutil.py drain URL LIMIT PID          time orderd_spool_records falling to 0:
                                              "start end first_seen_s total_s vmhwm_kib"
    benchutil.py e2e-watch URL DB N WRKPID LIMIT STAGESFILE
                                              stop wrk (SIGINT) once N are accepted, then time
                                              stored snapshots and webhook deliveries
"""
import os
import signal
import platform
import re
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request


def machine():
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = "unknown"
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem = "%.1f GiB" % (int(line.split()[1]) / 1048576.0)
                    break
    except OSError:
        pass
    disk = "unknown"
    here = os.environ.get("TMPDIR", "/tmp")
    try:
        out = subprocess.run(["df", "--output=source,fstype", here], capture_output=True,
                             text=True, timeout=5).stdout.split("\n")[1].split()
        src, fstype = out[0], out[1]
        dev = os.path.basename(src)
        rota = "/sys/block/%s/queue/rotational" % re.sub(r"p?\d+$", "", dev) if dev.startswith("nvme") \
            else "/sys/block/%s/queue/rotational" % re.sub(r"\d+$", "", dev)
        kind = ""
        if os.path.exists(rota):
            with open(rota) as f:
                kind = "rotational" if f.read().strip() == "1" else "non-rotational (SSD)"
            if dev.startswith("vd") or dev.startswith("xvd"):
                kind = "virtio/virtual disk, reports " + kind
        disk = "%s %s on %s %s" % (here, fstype, src, kind)
    except (OSError, IndexError, subprocess.SubprocessError):
        pass
    print("date: %s" % time.strftime("%Y-%m-%d %H:%M:%S %Z"))
    print("nproc: %d" % os.cpu_count())
    print("cpu: %s" % cpu)
    print("ram: %s" % mem)
    print("kernel: %s %s" % (platform.system(), platform.release()))
    print("disk: %s" % disk)


def to_ms(v):
    m = re.match(r"([\d.]+)(us|ms|s|m)$", v)
    if not m:
        return float("nan")
    x = float(m.group(1))
    return {"us": x / 1000.0, "ms": x, "s": x * 1000.0, "m": x * 60000.0}[m.group(2)]


def wrk(path):
    with open(path) as f:
        text = f.read()
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    p50 = re.search(r"^\s+50%\s+(\S+)", text, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", text, re.M)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    errs = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    print("%s %.3f %.3f %s %s" % (rps.group(1) if rps else "0",
                                  to_ms(p50.group(1)) if p50 else float("nan"),
                                  to_ms(p99.group(1)) if p99 else float("nan"),
                                  non2xx.group(1) if non2xx else "0",
                                  sum(int(x) for x in errs.groups()) if errs else 0))


def scrape(url):
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read().decode()


SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)')
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def samples(text):
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        m = SAMPLE.match(line)
        if m:
            yield m.group(1), dict(LABEL.findall(m.group(2) or "")), float(m.group(3))


def metric(url, name, want):
    try:
        text = scrape(url)
    except OSError:
        print(0)
        return
    total = 0.0
    for n, labels, v in samples(text):
        if n == name and all(labels.get(k) == val for k, val in want.items()):
            total += v
    print("%d" % total if total == int(total) else total)


def quantile(buckets, q):
    """buckets: sorted [(le, cumulative count)]; linear within the bucket."""
    if not buckets or buckets[-1][1] == 0:
        return float("nan")
    target = q * buckets[-1][1]
    lo_le, lo_c = 0.0, 0.0
    for le, c in buckets:
        if c >= target:
            if le == float("inf"):
                return lo_le
            span = c - lo_c
            return lo_le + (le - lo_le) * ((target - lo_c) / span if span else 1.0)
        lo_le, lo_c = le, c
    return lo_le


def stages(url):
    text = scrape(url)
    hist = {}
    counts = {}
    for n, labels, v in samples(text):
        if n == "orderd_stage_latency_seconds_bucket":
            key = tuple(sorted((k, x) for k, x in labels.items() if k != "le"))
            le = float("inf") if labels["le"] == "+Inf" else float(labels["le"])
            hist.setdefault(key, []).append((le, v))
        elif n == "orderd_stage_latency_seconds_count":
            counts[tuple(sorted(labels.items()))] = v
    if not hist:
        print("  (no orderd_stage_latency_seconds on /metrics)")
    for key in sorted(hist):
        b = sorted(hist[key])
        name = ",".join("%s=%s" % kv for kv in key)
        print("  %-60s n=%-8d p50=%8.3f ms  p99=%8.3f ms" %
              (name, b[-1][1], quantile(b, 0.5) * 1000, quantile(b, 0.99) * 1000))
    for n, labels, v in samples(text):
        if re.search(r"(queue|in_flight|spool_records|spool_bytes|depth|pending)", n) and not n.endswith("_bucket"):
            print("  %s%s %g" % (n, "{" + ",".join("%s=%s" % kv for kv in sorted(labels.items())) + "}"
                                  if labels else "", v))


def sqlcount(db, sql):
    try:
        con = sqlite3.connect("file:%s?mode=ro" % db, uri=True, timeout=5)
        try:
            row = con.execute(sql).fetchone()
            print(int(row[0]) if row and row[0] is not None else 0)
        finally:
            con.close()
    except sqlite3.Error:
        print(0)


def metric_value(text, name):
    """text: the exposition text, or samples() already parsed from it."""
    parsed = samples(text) if isinstance(text, str) else text
    return sum(v for n, _, v in parsed if n == name)


def e2e_watch(url, db, n, wrk_pid, limit, stages_file):
    """Polls orderd's metrics every 50 ms and counts the snapshots table
    when the store's counter says it is worth it; prints "key value" lines
    for e2e.sh."""
    t0 = time.time()
    t_posted = t_stored = t_hooked = None
    m = n
    peak_spool = peak_flight = 0
    con = None
    mid_done = False
    snaps = hooks = 0
    while time.time() - t0 < limit:
        try:
            text = list(samples(scrape(url)))
        except OSError:
            time.sleep(0.05)
            continue
        acc = metric_value(text, "orderd_plugin_http_requests_202")
        hooks = metric_value(text, "orderd_plugin_webhook_delivered")
        peak_spool = max(peak_spool, metric_value(text, "orderd_spool_records"))
        for nm, labels, v in text:
            if nm == "orderd_pipeline_in_flight" and labels.get("pipeline") == "orders":
                peak_flight = max(peak_flight, v)
        if t_posted is None and acc >= n:
            t_posted = time.time()
            try:
                os.kill(wrk_pid, signal.SIGINT)
            except OSError:
                pass
            # wrk exits within a moment; its last answers still count
            for _ in range(100):
                try:
                    os.kill(wrk_pid, 0)
                except OSError:
                    break
                time.sleep(0.02)
            m = metric_value(scrape(url), "orderd_plugin_http_requests_202")
        if con is None and os.path.exists(db):
            try:
                con = sqlite3.connect("file:%s?mode=ro" % db, uri=True, timeout=5)
            except sqlite3.Error:
                con = None
        # the store's own counter is cheap to poll; the table is counted
        # (a scan that costs the machine CPU) only once it says "enough"
        inserted = metric_value(text, "orderd_plugin_sqlite_events_inserted")
        if con is not None and inserted >= (m if t_posted is not None else n // 2) \
                and snaps < inserted:
            try:
                snaps = con.execute("SELECT count(*) FROM snapshots").fetchone()[0]
            except sqlite3.Error:
                snaps = 0
        if not mid_done and snaps >= n // 2:
            mid_done = True
            with open(stages_file, "w") as f:
                old = sys.stdout
                sys.stdout = f
                try:
                    stages(url)
                finally:
                    sys.stdout = old
        if t_posted is not None:
            m = max(m, acc)     # 202s still arriving after wrk was told to stop
            if t_stored is None and snaps >= m:
                t_stored = time.time()
            if t_hooked is None and hooks >= m:
                t_hooked = time.time()
            if t_stored is not None and t_hooked is not None:
                break
        time.sleep(0.05)
    if t_posted is None:
        try:
            os.kill(wrk_pid, signal.SIGINT)
        except OSError:
            pass
    if con is not None:
        con.close()

    def rel(t):
        return "%.3f" % (t - t0) if t is not None else "-"
    print("measured %d" % m)
    print("posted %s" % rel(t_posted))
    print("stored %s" % rel(t_stored))
    print("hooked %s" % rel(t_hooked))
    print("snapshots %d" % snaps)
    print("delivered %d" % hooks)
    print("peak_spool %d" % peak_spool)
    print("peak_in_flight %d" % peak_flight)


def fill(url, n, wrk_pid, limit):
    t0 = time.time()
    acc = 0
    while time.time() - t0 < limit:
        try:
            acc = metric_value(scrape(url), "orderd_plugin_http_requests_202")
        except OSError:
            pass
        if acc >= n:
            break
        try:
            os.kill(wrk_pid, 0)
        except OSError:
            break
        time.sleep(0.1)
    t1 = time.time()
    try:
        os.kill(wrk_pid, signal.SIGINT)
    except OSError:
        pass
    for _ in range(200):
        try:
            os.kill(wrk_pid, 0)
        except OSError:
            break
        time.sleep(0.02)
    time.sleep(0.2)
    acc = metric_value(scrape(url), "orderd_plugin_http_requests_202")
    print("%d %.3f" % (acc, t1 - t0))


def vm_kib(pid, key):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def drain(url, limit, pid):
    t0 = time.time()
    start = None
    last = None
    t_first = 0.0
    while time.time() - t0 < limit:
        try:
            text = scrape(url)
        except OSError:
            time.sleep(0.1)
            continue
        if "orderd_spool_records" not in text:
            time.sleep(0.1)
            continue
        last = metric_value(text, "orderd_spool_records")
        if start is None:
            start = last
            t_first = time.time() - t0
        if last == 0:
            break
        time.sleep(0.2)
    print("%d %d %.3f %.3f %d" % (start or 0, last if last is not None else -1, t_first,
                                  time.time() - t0, vm_kib(pid, "VmHWM")))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    print(s.getsockname()[1])
    s.close()


def main():
    a = sys.argv[1:]
    if not a:
        sys.exit(__doc__)
    if a[0] == "machine":
        machine()
    elif a[0] == "wrk":
        wrk(a[1])
    elif a[0] == "metric":
        metric(a[1], a[2], dict(x.split("=", 1) for x in a[3:]))
    elif a[0] == "stages":
        stages(a[1])
    elif a[0] == "sqlcount":
        sqlcount(a[1], a[2])
    elif a[0] == "fill":
        fill(a[1], int(a[2]), int(a[3]), float(a[4]))
    elif a[0] == "drain":
        drain(a[1], float(a[2]), int(a[3]))
    elif a[0] == "e2e-watch":
        e2e_watch(a[1], a[2], int(a[3]), int(a[4]), float(a[5]), a[6])
    elif a[0] == "free-port":
        free_port()
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
