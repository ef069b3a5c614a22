#!/usr/bin/env bash
# One command, one table: restmq beside bare axum, nchan and Redis on the same
# load, in one run (see bench/compare.py for what each row measures).
#   bench/compare.sh                       # everything, 12-20 min
#   SECTIONS=http DUR=5 REPS=1 bench/compare.sh   # just publish/pop, ~3 min
# Needs the benchmark kit (BENCH_KIT, default ../shared/bench) and its packages
# (its setup.sh: wrk, nginx with nchan, redis, curl).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
KIT=${BENCH_KIT:-$ROOT/../shared/bench}
export BENCH_KIT=$KIT
for tool in wrk nginx redis-server redis-benchmark curl python3; do
  command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] || {
    echo "missing $tool: run $KIT/setup.sh" >&2; exit 1; }
done
(cd "$ROOT" && cargo build --release --quiet)
(cd "$KIT/hello" && CARGO_TARGET_DIR=${HELLO_TARGET:-/tmp/bench-target} cargo build --release --locked --quiet)
export HELLO_BIN=${HELLO_TARGET:-/tmp/bench-target}/release/bench-hello
export RESTMQ_BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/restmq
ulimit -S -n "$(ulimit -H -n)" 2>/dev/null || true
exec python3 "$ROOT/bench/compare.py"
