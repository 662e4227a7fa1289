#!/usr/bin/env bash
# Measures the server of an earlier commit against this checkout's, on this machine, in one
# run: both servers are measured by this checkout's load generator, turn about, RUNS times
# per scenario, so run-to-run noise shows beside the difference.
#   benches/before-after.sh BASE                       the default scenarios, 3 runs each
#   benches/before-after.sh BASE meeting-300-smoke     just these scenarios
#   RUNS=5 benches/before-after.sh BASE ...
# Per run it records the load generator's report (server ns per forwarded packet, delivery,
# latency) and, from /proc and /metrics at the end of the run, the server's user and
# kernel CPU per forwarded packet over its whole life: kernel time is where the system
# calls of the packet path go. Results land in benches/results/before-after/ and
# BENCHMARKS.md is rendered again.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { echo "usage: $0 BASE [SCENARIO...]" >&2; exit 2; }
base=$(git rev-parse --short "$1")
shift
scenarios=("$@")
[ ${#scenarios[@]} -gt 0 ] || scenarios=(meeting-300-smoke audio-3000-smoke meeting-300)
runs=${RUNS:-3}
head=$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- sfu signaling loadtest src || echo "+dirty")
bins=target/before-after
mkdir -p "$bins/$base" "$bins/$head"

build_head() {
  cargo build --release -p huiyi -p huiyi-loadtest >/dev/null
}
build_head
cp target/release/huiyi "$bins/$head/huiyi"
cp target/release/loadtest "$bins/loadtest"
if [ ! -x "$bins/$base/huiyi" ]; then
  src=$bins/src-$base
  git worktree add --detach "$src" "$base" >/dev/null 2>&1
  # The shared target directory keeps the dependencies built once.
  (cd "$src" && CARGO_TARGET_DIR="$PWD/../../../target" cargo build --release -p huiyi >/dev/null)
  cp target/release/huiyi "$bins/$base/huiyi"
  git worktree remove --force "$src"
  # The release binary is this checkout's again (cargo rebuilds it at the next build).
  cp "$bins/$head/huiyi" target/release/huiyi
fi

day=$(date -u +%FT%H%M)
machine="$(nproc) cores, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), kernel $(uname -r)"
out=benches/results/before-after
mkdir -p "$out"
rows=$(mktemp)
http=127.0.0.1:7780
media=127.0.0.1:7781
ticks=$(getconf CLK_TCK)

for name in "${scenarios[@]}"; do
  file=benches/scenarios/$name.toml
  [ -f "$file" ] || { echo "no scenario $file" >&2; exit 2; }
  for run in $(seq 1 "$runs"); do
    # Turn about, and which goes first alternates, so neither always follows the other.
    order=("$base" "$head")
    [ $((run % 2)) -eq 0 ] && order=("$head" "$base")
    for commit in "${order[@]}"; do
      report=$(mktemp --suffix=.json)
      "$bins/$commit/huiyi" --http $http --media $media --log warn >/dev/null 2>&1 &
      pid=$!
      sleep 1
      echo "== $name run $run: $commit"
      set +e
      "$bins/loadtest" --scenario "$file" --url "http://$http" --server-pid $pid --report "$report" >/dev/null 2>&1
      code=$?
      set -e
      forwarded=$(curl -s "http://$http/metrics" | awk '$1 == "huiyi_rtp_forwarded_total" {print $2}')
      read -r utime stime < <(awk '{print $14, $15}' "/proc/$pid/stat")
      kill $pid 2>/dev/null || true
      wait $pid 2>/dev/null || true
      python3 - "$report" "$name" "$run" "$commit" "$code" "${forwarded:-0}" "$utime" "$stime" "$ticks" >>"$rows" <<'PY'
import json, sys
report, name, run, commit, code, forwarded, utime, stime, ticks = sys.argv[1:]
try:
    r = json.load(open(report))
except (OSError, ValueError):
    r = {}
forwarded, ticks = float(forwarded), float(ticks)
per = lambda t: (float(t) / ticks * 1e9 / forwarded) if forwarded else None
fwd_per_cpu_s = r.get("forwarded_packets_per_cpu_second")
print(json.dumps({
    "scenario": name, "run": int(run), "commit": commit, "exit_code": int(code),
    "connected": r.get("connected"), "participants": r.get("participants"),
    "delivery_min": (r.get("delivery") or {}).get("min"),
    "delivery_median": (r.get("delivery") or {}).get("median"),
    "latency_p99_ms": (r.get("latency_ms") or {}).get("p99"),
    "server_ns_per_forwarded": 1e9 / fwd_per_cpu_s if fwd_per_cpu_s else None,
    "forwarded_total": forwarded,
    "user_ns_per_forwarded": per(utime), "kernel_ns_per_forwarded": per(stime),
}))
PY
      rm -f "$report"
    done
  done
done

python3 - "$rows" "$out/$day-$base-vs-$head.json" "$base" "$head" "$machine" "$runs" "$0 $base ${scenarios[*]}" <<'PY'
import json, sys
rows_path, path, base, head, machine, runs, command = sys.argv[1:]
rows = [json.loads(l) for l in open(rows_path) if l.strip()]
json.dump({"base": base, "head": head, "machine": machine, "runs": int(runs),
           "command": "RUNS=%s %s" % (runs, command.replace("benches/before-after.sh", "benches/before-after.sh", 1)),
           "rows": rows}, open(path, "w"), indent=2)
print("wrote", path)
PY
rm -f "$rows"
python3 benches/render.py > BENCHMARKS.md
echo "BENCHMARKS.md rewritten"
