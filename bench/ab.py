#!/usr/bin/env python3
"""Two (or more) builds of restmq side by side, in alternating pairs, beside axum.

    cp target/release/restmq /tmp/restmq-before     # build, copy, change, build again
    bench/ab.py pop /tmp/restmq-before target/release/restmq
    PAIRS=5 DUR=5 bench/ab.py redis-pop /tmp/a /tmp/b

Loads: publish, pop, redis-publish, redis-pop (wrk c64, as bench/compare.py
runs them; pops from a queue filled beforehand with POP_DEPTH messages, as
there). Each pair runs axum's kit server first (GET / for pops, POST for
publishes), then each build in turn, so that every build is measured beside
a baseline minutes apart at most. For each run it prints the rate, its ratio
to that pair's axum, the CPU each server process spent per request (user +
system, µs: restmq, and Redis for the Redis loads) and how idle the machine's
cores were (idle or waiting on I/O). On this shared host rates drift by
10-25% within minutes; CPU per request and idle move much less, and tell a
change's cost where a rate cannot. Needs what compare.sh needs, built
(bench/compare.sh builds axum's server; HELLO_BIN to name another).
"""
import os
import statistics
import sys

os.environ.setdefault("DUR", "5")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare as C  # noqa: E402

LOADS = ("publish", "pop", "redis-publish", "redis-pop")
TICKS = os.sysconf("SC_CLK_TCK")


def cpu(pid):
    """User and system CPU seconds of a process (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICKS, int(fields[12]) / TICKS


def idle_ticks():
    """Ticks the cores spent idle or waiting on I/O, and all ticks."""
    with open("/proc/stat") as f:
        values = [int(x) for x in f.readline().split()[1:]]
    return values[3] + values[4], sum(values)


def measured(load, pids):
    """Runs `load`; its wrk result, µs of CPU per request for each pid, idle %
    (idle or waiting on I/O)."""
    before, idle0 = [cpu(p) for p in pids], idle_ticks()
    result = load()
    after, idle1 = [cpu(p) for p in pids], idle_ticks()
    if result is None:
        return None, [], 0.0
    requests = max(1, result["requests"])
    per = [((b[0] - a[0]) * 1e6 / requests, (b[1] - a[1]) * 1e6 / requests)
           for a, b in zip(before, after)]
    idle = 100 * (idle1[0] - idle0[0]) / max(1, idle1[1] - idle0[1])
    return result, per, idle


def main():
    if len(sys.argv) < 3 or sys.argv[1] not in LOADS:
        sys.exit(__doc__)
    load, builds = sys.argv[1], sys.argv[2:]
    for build in builds + [C.HELLO]:
        if not os.access(build, os.X_OK):
            sys.exit(f"missing {build}")
    pairs = int(os.environ.get("PAIRS", "3"))
    pops = load.endswith("pop")
    ratios = {b: [] for b in builds}
    redis = C.Redis() if load.startswith("redis") else None
    try:
        for pair in range(1, pairs + 1):
            hello = C.Hello()
            ceiling = (lambda: C.get(hello.url + "/", 64)) if pops else \
                (lambda: C.post(hello.url + "/q/bench", 64))
            ceiling()  # warm-up
            base, per, idle = measured(ceiling, [hello.proc.pid])
            C.stop(hello.proc)
            if base is None:
                sys.exit("axum gave no result")
            print(f"pair {pair}: axum {base['rps']:,.0f}/s, {per[0][0]:.1f}+{per[0][1]:.1f} µs, "
                  f"idle {idle:.0f}%", flush=True)
            for build in builds:
                C.RESTMQ = build
                if redis:
                    redis.flush()
                server = C.Restmq(redis_url=redis.url if redis else None).ready()
                C.post(server.url + "/q/warm", 64, C.WARM)
                pids = [server.proc.pid] + ([redis.proc.pid] if redis else [])
                if pops:
                    C.refill(server.url, C.POP_DEPTH)
                    result, per, idle = measured(lambda: C.get(server.url + "/q/bench", 64), pids)
                    result = C.unless_dry(server.url, C.POP_DEPTH, result)
                else:
                    result, per, idle = measured(lambda: C.post(server.url + "/q/bench", 64), pids)
                server.stop()
                if result is None:
                    continue
                ratio = result["rps"] / base["rps"]
                ratios[build].append(ratio)
                cpus = ", ".join(f"{name} {u:.1f}+{s:.1f} µs"
                                 for name, (u, s) in zip(["restmq", "redis"], per))
                print(f"  {build}: {result['rps']:,.0f}/s, {ratio:.2f}x, {cpus}, idle {idle:.0f}%",
                      flush=True)
    finally:
        C.cleanup()
    for build, values in ratios.items():
        if values:
            print(f"{build}: median {statistics.median(values):.2f}x of axum over {len(values)} pairs")


if __name__ == "__main__":
    main()
