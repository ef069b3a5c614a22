#!/usr/bin/env python3
"""restmq beside its baselines, in one run, on the same load: one table of ratios.

Started by bench/compare.sh (which builds what it needs). Everything listens on
127.0.0.1; every process started here is stopped on exit. The baselines come
from the benchmark kit (BENCH_KIT, default ../shared/bench): the bare axum
server `hello` (the HTTP ceiling), nginx + nchan (the HTTP pub/sub peer), and
redis-benchmark (the ceiling of the Redis store). Client and servers share the
machine: compare rows of one run, as ratios.

Rows (each a median of REPS runs, the targets alternating within a rep; a
ratio is the median of the reps' ratios, each rep's restmq beside the baseline
measured in the same rep):
  publish c64 / c1      wrk + the kit's post.lua (100-byte form) on POST /q/bench;
                        hello and nchan (/pub/bench) the same way
  pop c64 / c1          wrk GET /q/bench on a queue filled beforehand with more
                        than a run can take (checked after each run); the
                        ceiling is hello's GET /
  Redis store           the same on restmq --redis (its own redis-server on a
                        free port), beside redis-benchmark LPUSH/RPOP
  fan-out N x 1000      the kit's fanout.py (N curl EventSource subscribers,
                        1000 publishes) on nchan, hello and restmq /sse, and
                        on restmq --no-fsync (each sequential publish otherwise
                        waits for its fsync; nchan keeps nothing on disk)
  WebSocket fan-out     restmq bench --mode fanout --transport websocket
  latency               restmq bench --mode fanout: publish to receive, per
                        delivery (p50, p99), SSE and WebSocket
  idle memory           the kit's idle.py: RSS per idle SSE stream (10,000)
  restart               1,000,000 waiting messages: time from start to the
                        first answered GET
"""
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
KIT = os.path.abspath(os.environ.get("BENCH_KIT", os.path.join(ROOT, "..", "shared", "bench")))
RESTMQ = os.environ.get("RESTMQ_BIN", os.path.join(ROOT, "target", "release", "restmq"))
HELLO = os.environ.get("HELLO_BIN", "/tmp/bench-target/release/bench-hello")
DUR = int(os.environ.get("DUR", "5"))
REPS = int(os.environ.get("REPS", "3"))
WARM = int(os.environ.get("WARM", "1"))
# Messages waiting before a c64 pop run: more than the fastest run takes.
POP_DEPTH = int(os.environ.get("POP_DEPTH", str(200_000 * DUR)))
SECTIONS = set(os.environ.get("SECTIONS", "http,redis,fanout,latency,idle,restart").split(","))
IDLE_N = int(os.environ.get("IDLE_N", "10000"))
RESTART_N = int(os.environ.get("RESTART_N", "1000000"))
FANOUT_SUBS = [int(n) for n in os.environ.get("FANOUT_SUBS_LIST", "100,1000").split(",")]
NCHAN_PORT = 8091  # fixed by the kit's nchan.conf

OUT = tempfile.mkdtemp(prefix="restmq-compare-")
started = []  # (name, Popen) of what this script started


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url, deadline=30.0):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                r.read()
                return True
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"not up: {url}")


def start(name, argv, env=None, stderr=None):
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL,
                            stderr=stderr or open(os.path.join(OUT, name + ".log"), "ab"))
    started.append((name, proc))
    return proc


def stop(proc, sig=signal.SIGTERM, grace=15.0):
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for entry in list(started):
        if entry[1] is proc:
            started.remove(entry)


def cleanup():
    for _, proc in list(started):
        stop(proc, grace=5)
    subprocess.run([os.path.join(KIT, "nchan.sh"), "stop"], stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)


# ---- servers ------------------------------------------------------------------

class Restmq:
    """A restmq server of our own: embedded (durable, in a temp dir) or on Redis."""

    def __init__(self, redis_url=None, data_dir=None, extra=()):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = data_dir or tempfile.mkdtemp(prefix="restmq-data-", dir=OUT)
        argv = [RESTMQ, "--port", str(self.port), "--data-dir", self.data_dir, *extra]
        if redis_url:
            argv += ["--redis", redis_url]
        env = dict(os.environ, RUST_LOG="warn")
        self.t0 = time.monotonic()
        self.proc = start("restmq", argv, env=env)

    def ready(self):
        wait_http(self.url + "/healthz")
        return self

    def stop(self):
        stop(self.proc, signal.SIGTERM, grace=60)


class Redis:
    def __init__(self):
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="redis-", dir=OUT)
        self.proc = start("redis", ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                                    "--save", "", "--appendonly", "no", "--dir", self.dir])
        end = time.monotonic() + 10
        while subprocess.run(["redis-cli", "-p", str(self.port), "ping"], capture_output=True).stdout.strip() != b"PONG":
            if time.monotonic() > end:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def flush(self):
        subprocess.run(["redis-cli", "-p", str(self.port), "flushall"], capture_output=True, check=True)


class Hello:
    def __init__(self):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = start("hello", [HELLO], env=dict(os.environ, HELLO_PORT=str(self.port)))
        wait_http(self.url + "/")


def nchan_start():
    subprocess.run([os.path.join(KIT, "nchan.sh"), "start"], check=True, stdout=subprocess.DEVNULL)
    return f"http://127.0.0.1:{NCHAN_PORT}"


def nchan_stop():
    subprocess.run([os.path.join(KIT, "nchan.sh"), "stop"], check=True, stdout=subprocess.DEVNULL)


# ---- loads --------------------------------------------------------------------

GET_LUA = os.path.join(OUT, "get.lua")
with open(GET_LUA, "w") as f:
    f.write("""wrk.method = "GET"
function done(summary, latency, requests)
  local secs = summary.duration / 1e6
  local e = summary.errors
  io.write(string.format("WRKRESULT %.1f %d %d %d %d %d %d %d %d\\n",
    summary.requests / secs, latency:percentile(50), latency:percentile(99),
    summary.requests, e.status, e.connect, e.read, e.write, e.timeout))
end
""")


def wrk(url, conns, script, duration=None):
    """req/s, p50 ms, p99 ms, requests, non-2xx + socket errors."""
    threads = 1 if conns == 1 else 2
    duration = duration or DUR
    out = subprocess.run(["timeout", "-k", "5", str(duration + 30), "wrk", f"-t{threads}", f"-c{conns}",
                          f"-d{duration}s", "--latency", "-s", script, url],
                         capture_output=True, text=True).stdout
    line = next((l for l in out.splitlines() if l.startswith("WRKRESULT")), None)
    if line is None:
        log(f"   wrk gave no result for {url}:\n{out}")
        return None
    rps, p50, p99, requests, non2xx, *errs = line.split()[1:]
    return {"rps": float(rps), "p50": int(p50) / 1000, "p99": int(p99) / 1000,
            "requests": int(requests), "bad": int(non2xx) + sum(int(e) for e in errs)}


def post(url, conns, duration=None):
    return wrk(url, conns, os.path.join(KIT, "post.lua"), duration)


def get(url, conns, duration=None):
    return wrk(url, conns, GET_LUA, duration)


def stats(url, queue):
    with urllib.request.urlopen(f"{url}/stats/{queue}", timeout=30) as r:
        return json.loads(r.read())


def fill(url, queue, count):
    """Publishes `count` 100-byte messages in ndjson batches through `restmq push`."""
    line = ("m" * 100 + "\n").encode()
    proc = subprocess.Popen([RESTMQ, "push", queue, "--server", url], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    chunk = line * 10000
    for _ in range(count // 10000):
        proc.stdin.write(chunk)
    proc.stdin.write(line * (count % 10000))
    proc.stdin.close()
    if proc.wait() != 0:
        raise RuntimeError(f"restmq push failed: {proc.stderr.read().decode()}")


def purge(url, queue):
    req = urllib.request.Request(f"{url}/q/{queue}", method="DELETE")
    with urllib.request.urlopen(req, timeout=60) as r:
        r.read()


def refill(url, depth):
    """Empties the queue `bench` and fills it with `depth` messages to pop."""
    purge(url, "bench")
    fill(url, "bench", depth)


def unless_dry(url, depth, result):
    """`result` of popping `bench` after `refill`, or None if the queue ran dry
    (then the pops were not the limit)."""
    if result is not None and stats(url, "bench")["len"] == 0:
        log(f"   the queue ran dry ({depth} were not enough): the pop rate is not measured")
        return None
    return result


def pop_run(url, conns, depth):
    """Pops from a queue filled with `depth` messages; None if it ran dry."""
    refill(url, depth)
    return unless_dry(url, depth, get(url + "/q/bench", conns))


def fanout_py(port, pub, sub, subs):
    env = dict(os.environ, FANOUT_PORT=str(port), FANOUT_PUB=pub, FANOUT_SUB=sub,
               FANOUT_SUBS=str(subs), FANOUT_MSGS="1000", FANOUT_TIMEOUT="120")
    res = subprocess.run(["timeout", "-k", "5", "200", "python3", os.path.join(KIT, "fanout.py")],
                         env=env, capture_output=True, text=True)
    line = next((l for l in res.stdout.splitlines() if l.startswith("FANOUT")), None)
    if line is None:
        log(f"   fanout.py failed: {res.stderr.strip()[-400:]}")
        return None
    t_pub, t_all, complete, ordered, rate = line.split()[1:]
    if int(complete) != subs or int(ordered) != subs:
        log(f"   fan-out incomplete: {complete}/{subs} complete, {ordered}/{subs} in order")
        return None
    return {"secs": float(t_all), "rate": float(rate)}


def bench_fanout(url, subs, transport):
    res = subprocess.run([RESTMQ, "bench", "--server", url, "--mode", "fanout", "--subscribers", str(subs),
                          "--messages", "1000", "--transport", transport, "--json"],
                         capture_output=True, text=True, timeout=300)
    try:
        report = json.loads(res.stdout)
    except json.JSONDecodeError:
        log(f"   restmq bench failed: {res.stderr.strip()[-400:]}")
        return None
    if report["complete_subscribers"] != subs:
        log(f"   fan-out incomplete: {report['first_incomplete']}")
        return None
    return {"secs": report["elapsed_secs"], "p50": report["p50_ms"], "p99": report["p99_ms"]}


# ---- the table ----------------------------------------------------------------

ROWS = []


def med(values, key):
    values = [v[key] for v in values if v is not None]
    return statistics.median(values) if values else None


def paired(ours, base, key):
    """Per repetition, restmq's result and its baseline's, where both exist."""
    return [(o[key], b[key]) for o, b in zip(ours, base) if o is not None and b is not None]


def row(what, ours, base, base_name, better="higher", target=None, unit="/s", pairs=None):
    """Adds a row: ours vs base; ratio = ours/base (or base/ours when lower is better).
    With `pairs` (restmq's and the baseline's result of each repetition), the
    ratio is the median of the repetitions' ratios: this host's speed drifts by
    10-20% within minutes, and the ratio of two medians could pair a baseline
    of a fast phase with a restmq run of a slow one."""
    ratio = None
    def of(o, b):
        return o / b if better == "higher" else b / o
    if pairs:
        ratios = [of(o, b) for o, b in pairs if o and b]
        ratio = statistics.median(ratios) if ratios else None
    elif ours is not None and base:
        ratio = of(ours, base)
    verdict = ""
    if target is not None and ratio is not None:
        verdict = "ok" if ratio >= target else "BELOW"
    ROWS.append((what, ours, base, base_name, ratio, target, verdict, unit))


def fmt(x, unit):
    if x is None:
        return "-"
    if unit == "/s":
        return f"{x:,.0f}/s"
    if unit == "s":
        return f"{x:.3f} s"
    if unit == "ms":
        return f"{x:.2f} ms"
    if unit == "B":
        return f"{x:,.0f} B"
    return f"{x}"


def print_table():
    head = ("load", "restmq", "baseline", "ratio", "target")
    lines = [head]
    for what, ours, base, base_name, ratio, target, verdict, unit in ROWS:
        lines.append((what, fmt(ours, unit), f"{fmt(base, unit)} {base_name}".strip(),
                      "-" if ratio is None else f"{ratio:.2f}x",
                      "" if target is None else f">= {target:.2f}x {verdict}"))
    widths = [max(len(l[i]) for l in lines) for i in range(len(head))]
    out = []
    out.append("| " + " | ".join(h.ljust(w) for h, w in zip(head, widths)) + " |")
    out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for l in lines[1:]:
        out.append("| " + " | ".join(c.ljust(w) for c, w in zip(l, widths)) + " |")
    print("\n".join(out))


# ---- sections -----------------------------------------------------------------

def http_section(redis):
    """Publish and pop, c64 and c1: hello, restmq embedded, restmq on Redis, nchan."""
    results = {k: [] for k in ["hello-post-64", "hello-post-1", "hello-get-64", "hello-get-1",
                               "nchan-post-64", "nchan-post-1",
                               "emb-post-64", "emb-post-1", "emb-pop-64", "emb-pop-1",
                               "redis-post-64", "redis-post-1", "redis-pop-64", "redis-pop-1",
                               "lpush", "rpop"]}
    for rep in range(1, REPS + 1):
        log(f"== rep {rep}/{REPS}")
        hello = Hello()
        post(hello.url + "/q/bench", 64, WARM)
        results["hello-post-64"].append(post(hello.url + "/q/bench", 64))
        results["hello-post-1"].append(post(hello.url + "/q/bench", 1))
        results["hello-get-64"].append(get(hello.url + "/", 64))
        results["hello-get-1"].append(get(hello.url + "/", 1))
        stop(hello.proc)
        log(f"   hello: {[results[k][-1]['rps'] if results[k][-1] else None for k in ['hello-post-64','hello-post-1','hello-get-64','hello-get-1']]}")
        # A single connection pops about as fast as axum answers `GET /` on one
        # (1x, give or take a fifth): twice that rate fills the c1 runs of this rep.
        get1 = results["hello-get-1"][-1]
        depth1 = int(2 * max(get1["rps"] if get1 else 0, 15_000) * DUR)

        server = Restmq().ready()
        post(server.url + "/q/warm", 64, WARM)
        results["emb-post-64"].append(post(server.url + "/q/bench", 64))
        results["emb-post-1"].append(post(server.url + "/q/bench", 1))
        results["emb-pop-64"].append(pop_run(server.url, 64, POP_DEPTH))
        results["emb-pop-1"].append(pop_run(server.url, 1, depth1))
        server.stop()
        log(f"   restmq embedded: {[results[k][-1]['rps'] if results[k][-1] else None for k in ['emb-post-64','emb-post-1','emb-pop-64','emb-pop-1']]}")

        if redis is not None:
            redis.flush()
            server = Restmq(redis_url=redis.url).ready()
            post(server.url + "/q/warm", 64, WARM)
            results["redis-post-64"].append(post(server.url + "/q/bench", 64))
            results["redis-post-1"].append(post(server.url + "/q/bench", 1))
            results["redis-pop-64"].append(pop_run(server.url, 64, POP_DEPTH))
            results["redis-pop-1"].append(pop_run(server.url, 1, depth1))
            server.stop()
            redis.flush()
            out = subprocess.run(["redis-benchmark", "-p", str(redis.port), "-q", "-n", "200000", "-c", "64",
                                  "-t", "lpush,rpop", "--csv"], capture_output=True, text=True).stdout
            for line in out.replace('"', "").splitlines():
                parts = line.split(",")
                if parts[0] in ("LPUSH", "RPOP"):
                    results[parts[0].lower()].append({"rps": float(parts[1])})
            redis.flush()
            log(f"   restmq redis: {[results[k][-1]['rps'] if results[k][-1] else None for k in ['redis-post-64','redis-post-1','redis-pop-64','redis-pop-1']]}")

        nchan = nchan_start()
        results["nchan-post-64"].append(post(nchan + "/pub/bench", 64))
        results["nchan-post-1"].append(post(nchan + "/pub/bench", 1))
        nchan_stop()

    def vs(what, ours, base, base_name, key="rps", **kw):
        row(what, med(results[ours], key), med(results[base], key), base_name,
            pairs=paired(results[ours], results[base], key), **kw)

    vs("publish, embedded durable, c64", "emb-post-64", "hello-post-64", "axum", target=0.75)
    vs("publish, embedded durable, c1", "emb-post-1", "hello-post-1", "axum")
    vs("pop, embedded, c64", "emb-pop-64", "hello-get-64", "axum GET /", target=0.75)
    vs("pop, embedded, c1", "emb-pop-1", "hello-get-1", "axum GET /")
    if redis is not None:
        vs("publish, Redis, c64", "redis-post-64", "hello-post-64", "axum", target=0.6)
        vs("publish, Redis, c1", "redis-post-1", "hello-post-1", "axum")
        vs("pop, Redis, c64", "redis-pop-64", "hello-get-64", "axum GET /", target=0.6)
        vs("pop, Redis, c1", "redis-pop-1", "hello-get-1", "axum GET /")
        vs("publish, Redis, c64 (vs the store)", "redis-post-64", "lpush", "redis LPUSH")
        vs("pop, Redis, c64 (vs the store)", "redis-pop-64", "rpop", "redis RPOP")
    vs("nchan publish, c64 (the peer)", "nchan-post-64", "hello-post-64", "axum")
    vs("publish, embedded, c64 vs nchan", "emb-post-64", "nchan-post-64", "nchan")
    # p50 latencies, for the record.
    vs("publish p50, embedded, c64", "emb-post-64", "hello-post-64", "axum", key="p50", better="lower",
       unit="ms")


def fanout_section():
    for subs in FANOUT_SUBS:
        runs = {"nchan": [], "hello": [], "restmq": [], "ws": [], "nofsync": []}
        for rep in range(1, REPS + 1):
            log(f"== fan-out {subs} x 1000, rep {rep}/{REPS}")
            nchan_start()
            runs["nchan"].append(fanout_py(NCHAN_PORT, "/pub/{chan}", "/sub/{chan}", subs))
            nchan_stop()
            hello = Hello()
            runs["hello"].append(fanout_py(hello.port, "/q/{chan}", "/sse/{chan}", subs))
            stop(hello.proc)
            server = Restmq().ready()
            runs["restmq"].append(fanout_py(server.port, "/q/{chan}", "/sse/{chan}", subs))
            runs["ws"].append(bench_fanout(server.url, subs, "ws"))
            server.stop()
            # Each of the 1,000 sequential publishes waits for its fsync, which
            # nchan (memory only) does not: the same without it, for the record.
            server = Restmq(extra=["--no-fsync"]).ready()
            runs["nofsync"].append(fanout_py(server.port, "/q/{chan}", "/sse/{chan}", subs))
            server.stop()
            log(f"   {[(k, v[-1]['secs'] if v[-1] else None) for k, v in runs.items()]}")
        nchan_secs = med(runs["nchan"], "secs")
        row(f"fan-out {subs} SSE x 1000, all delivered", med(runs["restmq"], "secs"), nchan_secs, "nchan",
            better="lower", target=1.0 if subs == 100 else None, unit="s",
            pairs=paired(runs["restmq"], runs["nchan"], "secs"))
        row(f"fan-out {subs} SSE x 1000 (vs in-memory axum)", med(runs["restmq"], "secs"),
            med(runs["hello"], "secs"), "axum broadcast", better="lower", unit="s",
            pairs=paired(runs["restmq"], runs["hello"], "secs"))
        row(f"fan-out {subs} WebSocket x 1000 (restmq bench)", med(runs["ws"], "secs"), nchan_secs,
            "nchan SSE", better="lower", unit="s", pairs=paired(runs["ws"], runs["nchan"], "secs"))
        row(f"fan-out {subs} SSE x 1000, restmq --no-fsync", med(runs["nofsync"], "secs"), nchan_secs,
            "nchan", better="lower", unit="s", pairs=paired(runs["nofsync"], runs["nchan"], "secs"))


def latency_section():
    for transport in ("sse", "ws"):
        runs = []
        for rep in range(REPS):
            server = Restmq().ready()
            runs.append(bench_fanout(server.url, 1, transport))
            server.stop()
        row(f"publish-to-receive p50, {transport}, 1 subscriber", med(runs, "p50"), None, "", unit="ms")
        row(f"publish-to-receive p99, {transport}, 1 subscriber", med(runs, "p99"), None, "", unit="ms")


def idle_section():
    runs = {"restmq": [], "nchan": [], "hello": []}
    try:
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        pass
    for rep in range(REPS):
        for target in ("restmq", "nchan", "hello"):
            if target == "restmq":
                server = Restmq().ready()
                args = ["--port", str(server.port), "--path", "/sse/{chan}", "--pids", str(server.proc.pid)]
            elif target == "hello":
                server = Hello()
                args = ["--port", str(server.port), "--path", "/sse/{chan}", "--pids", str(server.proc.pid)]
            else:
                nchan_start()
                args = ["--port", str(NCHAN_PORT), "--path", "/sub/{chan}", "--pidfile", "/tmp/nchan/nginx.pid"]
            res = subprocess.run(["timeout", "-k", "5", "200", "python3", os.path.join(KIT, "idle.py"), *args,
                                  "-n", str(IDLE_N)], capture_output=True, text=True)
            line = next((l for l in res.stdout.splitlines() if l.startswith("IDLE")), "")
            fields = dict(kv.split("=", 1) for kv in line.split()[1:] if "=" in kv)
            conns = int(fields.get("conns", "0"))
            runs[target].append({"bytes": float(fields["per_conn_bytes"])} if conns == IDLE_N else None)
            if conns != IDLE_N:
                log(f"   idle {target}: {conns}/{IDLE_N} connections: {res.stderr.strip()[-300:]}")
            if target == "restmq":
                server.stop()
            elif target == "hello":
                stop(server.proc)
            else:
                nchan_stop()
        log(f"   idle: {[(k, v[-1]) for k, v in runs.items()]}")
    ours = med(runs["restmq"], "bytes")
    row(f"memory per idle SSE stream ({IDLE_N:,})", ours, 8192, "target", better="lower", target=1.0, unit="B")
    row(f"memory per idle SSE stream ({IDLE_N:,}) vs nchan", ours, med(runs["nchan"], "bytes"), "nchan",
        better="lower", unit="B", pairs=paired(runs["restmq"], runs["nchan"], "bytes"))
    row(f"memory per idle SSE stream ({IDLE_N:,}) vs axum", ours, med(runs["hello"], "bytes"), "axum",
        better="lower", unit="B", pairs=paired(runs["restmq"], runs["hello"], "bytes"))


def restart_section():
    server = Restmq().ready()
    log(f"== restart: filling {RESTART_N:,} messages")
    fill(server.url, "bench", RESTART_N)
    assert stats(server.url, "bench")["len"] == RESTART_N
    data_dir = server.data_dir
    server.stop()
    runs = []
    left = RESTART_N
    for rep in range(REPS):
        server = Restmq(data_dir=data_dir)
        t0 = server.t0
        first = None
        while first is None and time.monotonic() - t0 < 120:
            try:
                with urllib.request.urlopen(f"{server.url}/q/bench", timeout=5) as r:
                    if r.status == 200 and r.read():
                        first = time.monotonic() - t0
            except OSError:
                time.sleep(0.005)
        left -= 1
        runs.append({"secs": first} if first is not None else None)
        if stats(server.url, "bench")["len"] != left:
            log("   restart lost messages!")
            runs[-1] = None
        server.stop()
        log(f"   restart {rep + 1}: first message popped {first} s after the start")
    row(f"restart with {RESTART_N:,} waiting, first GET popped", med(runs, "secs"), 1.0, "target",
        better="lower", target=1.0, unit="s")


def synced_write_us(count=500):
    """Median µs of a 4 KiB write and fdatasync, in place, on the file system of
    restmq's data: durable publishes wait for one, so their rows depend on it."""
    path = os.path.join(OUT, "synced-write")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        block = b"\0" * 4096
        for at in range(0, 64 * 4096, 4096):   # allocated first: no size change
            os.pwrite(fd, block, at)
        os.fsync(fd)
        times = []
        for i in range(count):
            start = time.perf_counter()
            os.pwrite(fd, block, (i % 64) * 4096)
            os.fdatasync(fd)
            times.append(time.perf_counter() - start)
    finally:
        os.close(fd)
        os.unlink(path)
    return statistics.median(times) * 1e6


def main():
    for need in (RESTMQ, HELLO):
        if not os.access(need, os.X_OK):
            sys.exit(f"missing {need}: run bench/compare.sh, which builds it")
    flush = synced_write_us()
    log(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {os.cpu_count()} cores; "
        f"a synced 4 KiB write {flush:.0f} µs (median); DUR={DUR}s REPS={REPS}; logs in {OUT}")
    redis = None
    try:
        if "redis" in SECTIONS and shutil.which("redis-server"):
            redis = Redis()
        if "http" in SECTIONS:
            http_section(redis)
        if "fanout" in SECTIONS:
            fanout_section()
        if "latency" in SECTIONS:
            latency_section()
        if "idle" in SECTIONS:
            idle_section()
        if "restart" in SECTIONS:
            restart_section()
    finally:
        cleanup()
    print(f"restmq compare, {time.strftime('%Y-%m-%d', time.gmtime())}, {os.cpu_count()} cores "
          f"(client and servers share them), a synced 4 KiB write {flush:.0f} µs (median), "
          f"DUR={DUR}s x REPS={REPS} (medians)")
    print_table()


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        cleanup()
        sys.exit(130)
