#!/usr/bin/env bash
# What a Redis pop's script costs Redis, in instructions, which do not move
# with the machine's load the way times do: redis-server runs under valgrind's
# callgrind, its queue filled with FILL 100-byte messages in the original
# RestMQ's layout, and each script is called CALLS times taking N messages a
# call (redis-benchmark, one connection). Prints instructions a call and a
# message, twice per script, alternating, to show that they repeat.
#   bench/script_cost.sh                    # POP as src/store/redis/scripts.rs has it
#   bench/script_cost.sh old.lua new.lua    # compare variants (each a whole script)
#   N=1 bench/script_cost.sh                # a round's fixed cost
# Needs valgrind, redis-server, redis-cli, redis-benchmark and python3.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
N=${N:-19}
CALLS=${CALLS:-300}
FILL=${FILL:-60000}
for tool in valgrind callgrind_control redis-server redis-cli redis-benchmark python3; do
  command -v "$tool" >/dev/null 2>&1 || { echo "missing $tool" >&2; exit 1; }
done
DIR=$(mktemp -d /tmp/restmq-script-cost.XXXXXX)
PID=
trap '[ -n "$PID" ] && kill "$PID" 2>/dev/null; wait 2>/dev/null; rm -rf "$DIR"' EXIT

scripts=("$@")
if [ ${#scripts[@]} -eq 0 ]; then
  # The prelude and POP's body, as restmq sends them (see scripts::script).
  python3 - "$ROOT/src/store/redis/scripts.rs" "$DIR/POP.lua" <<'PY'
import sys
source = open(sys.argv[1]).read()
prelude = source.split('const PRELUDE: &str = r"', 1)[1].split('\n";', 1)[0]
body = source.split("pub static POP: LazyLock<Script>", 1)[1].split('r"', 1)[1].split('\n",', 1)[0]
open(sys.argv[2], "w").write(prelude + body)
PY
  scripts=("$DIR/POP.lua")
fi

PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$DIR/cg.out" \
  redis-server --port "$PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$DIR" \
  >/dev/null 2>"$DIR/valgrind.log" &
PID=$!
for _ in $(seq 600); do
  redis-cli -p "$PORT" ping 2>/dev/null | grep -q PONG && break
  sleep 0.1
done
python3 - "$FILL" >"$DIR/fill.txt" <<'PY'
import sys
n, value = int(sys.argv[1]), "m" * 100
for i in range(1, n + 1):
    sys.stdout.write(f"SET bench:{i} {value}\r\nLPUSH bench:queue bench:{i}\r\n")
sys.stdout.write(f"SET bench:UUID {n}\r\n")
PY
redis-cli -p "$PORT" --pipe <"$DIR/fill.txt" >/dev/null

NOW=$(date +%s%3N)
KEYS=(8 bench:queue bench:ready bench:inflight bench:delayed bench:deliveries bench:dying bench:config bench:expires)
dump=0
for _ in 1 2; do
  for script in "${scripts[@]}"; do
    sha=$(redis-cli -p "$PORT" script load "$(cat "$script")")
    redis-benchmark -p "$PORT" -c 1 -n 3 -q evalsha "$sha" "${KEYS[@]}" "$N" "$NOW" >/dev/null
    callgrind_control -i on "$PID" >/dev/null 2>&1
    callgrind_control -z "$PID" >/dev/null 2>&1
    redis-benchmark -p "$PORT" -c 1 -n "$CALLS" -q evalsha "$sha" "${KEYS[@]}" "$N" "$NOW" >/dev/null
    callgrind_control -d "$PID" >/dev/null 2>&1
    callgrind_control -i off "$PID" >/dev/null 2>&1
    dump=$((dump + 1))
    total=$(grep -m1 '^summary:\|^totals:' "$DIR/cg.out.$dump" | awk '{print $2}')
    left=$(redis-cli -p "$PORT" llen bench:queue)
    [ "$left" -gt 0 ] || { echo "the queue ran dry: raise FILL" >&2; exit 1; }
    echo "$(basename "$script"): $((total / CALLS)) instructions a call, $((total / CALLS / N)) a message"
  done
done
