#!/usr/bin/env bash
# Reruns Huiyi's benchmarks and rewrites BENCHMARKS.md from the results:
#   benches/run.sh                 every scenario below plus the micro-benchmarks
#   benches/run.sh meeting-300     just these scenarios (names of benches/scenarios/*.toml)
#   benches/run.sh --micro         just the micro-benchmarks (add scenario names to run both)
#   benches/run.sh --tier-any-cpu broadcast-1000
#                                  a broadcast tier free to run on any CPU (by default it is
#                                  held to CPU 0 and the generator to CPU 1)
# Each scenario runs against a fresh release `huiyi` on this machine (a broadcast scenario
# against an origin and its edges, each a process of its own); the raw report and
# plot land in benches/results/<scenario>/<date>-<commit>.{json,svg} with the exact
# command beside them, and BENCHMARKS.md is rendered from every stored result.
set -euo pipefail
cd "$(dirname "$0")/.."
default_scenarios=(meeting-300-smoke audio-3000-smoke churn-smoke broadcast-1000-smoke meeting-300 meeting-300-all-admitted broadcast-1000)
micro=0
tier_cpus=0
scenarios=()
for arg in "$@"; do
  case "$arg" in
    --micro) micro=1 ;;
    --tier-any-cpu) tier_cpus=any ;;
    *) scenarios+=("$arg") ;;
  esac
done
if [ $# -eq 0 ]; then
  scenarios=("${default_scenarios[@]}")
  micro=1
fi

source benches/common.sh
http=127.0.0.1:7780
media=127.0.0.1:7781
relay=127.0.0.1:7783

# Wait (at most 10 s) until a node answers on its HTTP address.
wait_http() {
  for _ in $(seq 1 100); do
    python3 -c 'import sys, urllib.request; urllib.request.urlopen(f"http://{sys.argv[1]}/healthz", timeout=1)' "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "no node answered on $1" >&2
  return 1
}

# Wait (at most 10 s) until the origin at $1 has $2 edges linked: an edge answering HTTP
# may not have its relay link up yet, and the origin serves players itself until it has.
wait_edges() {
  for _ in $(seq 1 100); do
    python3 - "$1" "$2" <<'PY' && return 0
import sys, urllib.request
text = urllib.request.urlopen(f"http://{sys.argv[1]}/metrics", timeout=1).read().decode()
links = sum(float(l.split()[-1]) for l in text.splitlines() if l.startswith('huiyi_relay_links{to="child"}'))
sys.exit(0 if links >= int(sys.argv[2]) else 1)
PY
    sleep 0.1
  done
  echo "the origin on $1 did not link its $2 edges" >&2
  return 1
}

# Whatever stops the script, no node of a run is left holding the ports.
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT

for name in "${scenarios[@]+"${scenarios[@]}"}"; do
  file=benches/scenarios/$name.toml
  [ -f "$file" ] || { echo "no scenario $file" >&2; exit 2; }
  dir=benches/results/$name
  mkdir -p "$dir"
  out=$dir/$day-$commit
  # A broadcast scenario names its edges: an origin and that many edge processes, each
  # measured on its own; any other scenario runs against one all-in-one node.
  edges=$(python3 -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb")).get("broadcast", {}).get("edges", 0))' "$file")
  # A scenario may name a config file for its node (`node_config`); the default node otherwise.
  node_config=$(python3 -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb")).get("node_config", ""))' "$file")
  node_flags=${node_config:+--config $node_config}
  pids=()
  measured=""
  generator=""
  if [ "$edges" -gt 0 ]; then
    # The tier's target is one core: its processes share CPU 0, the generator has the
    # other (docs/loadtest.md), so neither takes the other's time.
    tier="taskset -c 0"
    generator="taskset -c 1"
    if [ "$tier_cpus" = any ]; then
      # Every process of the run shares both CPUs, as on a machine of their own would
      # each edge have its cores; the tier's CPU is still measured per process. The
      # generator yields to the tier (nice 10): it stamps arrivals in the kernel, so its own
      # waits do not count as the tier's, and it takes the CPU the tier leaves.
      tier=""
      generator="nice -n 10"
    fi
    $tier ./target/release/huiyi --http $http --media $media --role origin --relay-listen $relay \
      --node-name origin --log warn >"$out.server.log" 2>&1 &
    pids+=($!)
    measured="--server-pid origin=$!"
    wait_http $http
    for i in $(seq 1 "$edges"); do
      $tier ./target/release/huiyi --http 127.0.0.1:$((7790 + 2 * i)) --media 127.0.0.1:$((7791 + 2 * i)) \
        --role edge --origin $relay --node-name edge-$i --log warn >>"$out.server.log" 2>&1 &
      pids+=($!)
      measured="$measured --server-pid edge-$i=$!"
      wait_http 127.0.0.1:$((7790 + 2 * i))
    done
    wait_edges $http "$edges"
  else
    ./target/release/huiyi $node_flags --http $http --media $media --log warn >"$out.server.log" 2>&1 &
    pids+=($!)
    measured="--server-pid $!"
    wait_http $http
  fi
  command="${generator:+$generator }./target/release/loadtest --scenario $file --url http://$http $measured --report $out.json --plot $out.svg"
  echo "== $name: ${node_flags:+huiyi $node_flags; }$command"
  set +e
  $command
  code=$?
  set -e
  kill "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
  # A failed run keeps its nodes' log beside its report.
  [ "$code" -ne 0 ] || rm -f "$out.server.log"
  python3 - "$out.meta.json" "${node_flags:+./target/release/huiyi $node_flags & }$command" "$commit" "$machine" "$code" "$([ "$edges" -gt 0 ] && echo "$tier_cpus")" <<'PY'
import json, sys
path, command, commit, machine, code, tier_cpus = sys.argv[1:]
meta = {"command": command, "commit": commit, "machine": machine, "exit_code": int(code)}
if tier_cpus:
    meta["tier_cpus"] = tier_cpus
json.dump(meta, open(path, "w"), indent=2)
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
