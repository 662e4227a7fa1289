#!/usr/bin/env bash
# Reruns Huiyi's benchmarks and rewrites BENCHMARKS.md from the results:
#   benches/run.sh                 every scenario below plus the micro-benchmarks
#   benches/run.sh meeting-300     just these scenarios (names of benches/scenarios/*.toml)
#   benches/run.sh --micro         just the micro-benchmarks (add scenario names to run both)
# Each scenario runs against a fresh release `huiyi` on this machine; the raw report and
# plot land in benches/results/<scenario>/<date>-<commit>.{json,svg} with the exact
# command beside them, and BENCHMARKS.md is rendered from every stored result.
set -euo pipefail
cd "$(dirname "$0")/.."
default_scenarios=(meeting-300-smoke audio-3000-smoke churn-smoke meeting-300)
micro=0
scenarios=()
for arg in "$@"; do
  case "$arg" in
    --micro) micro=1 ;;
    *) scenarios+=("$arg") ;;
  esac
done
if [ $# -eq 0 ]; then
  scenarios=("${default_scenarios[@]}")
  micro=1
fi

cargo build --release -p huiyi -p huiyi-loadtest >/dev/null
commit=$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- sfu signaling loadtest src || echo "+dirty")
day=$(date -u +%FT%H%M)
machine="$(nproc) cores, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), kernel $(uname -r)"
http=127.0.0.1:7780
media=127.0.0.1:7781

for name in "${scenarios[@]+"${scenarios[@]}"}"; do
  file=benches/scenarios/$name.toml
  [ -f "$file" ] || { echo "no scenario $file" >&2; exit 2; }
  dir=benches/results/$name
  mkdir -p "$dir"
  out=$dir/$day-$commit
  ./target/release/huiyi --http $http --media $media --log warn >"$out.server.log" 2>&1 &
  pid=$!
  sleep 1
  command="./target/release/loadtest --scenario $file --url http://$http --server-pid $pid --report $out.json --plot $out.svg"
  echo "== $name: $command"
  set +e
  $command
  code=$?
  set -e
  kill $pid 2>/dev/null || true
  wait $pid 2>/dev/null || true
  rm -f "$out.server.log"
  python3 - "$out.meta.json" "$command" "$commit" "$machine" "$code" <<'PY'
import json, sys
path, command, commit, machine, code = sys.argv[1:]
json.dump({"command": command, "commit": commit, "machine": machine, "exit_code": int(code)}, open(path, "w"), indent=2)
PY
done

if [ "$micro" = 1 ]; then
  cargo bench -p huiyi-benches -- --noplot >/dev/null 2>&1
  mkdir -p benches/results/micro
  python3 - "benches/results/micro/$day-$commit.json" "$commit" "$machine" <<'PY'
import json, pathlib, sys
path, commit, machine = sys.argv[1:]
results = {}
for est in pathlib.Path("target/criterion").glob("**/new/estimates.json"):
    bench = json.load(open(est.parent / "benchmark.json"))
    median_ns = json.load(open(est))["median"]["point_estimate"]
    elements = (bench.get("throughput") or {}).get("Elements")
    results[bench["full_id"]] = {"median_ns": median_ns, "elements": elements}
json.dump({"command": "cargo bench -p huiyi-benches", "commit": commit, "machine": machine,
           "results": results}, open(path, "w"), indent=2)
PY
fi

python3 benches/render.py > BENCHMARKS.md
echo "BENCHMARKS.md rewritten"
