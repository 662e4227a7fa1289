#!/usr/bin/env bash
# Instructions the server executes per datagram it sends, counted by valgrind's callgrind
# over a scenario's measured window. Unlike seconds, a count hardly moves with the machine's
# load or with the other CPU being busy, so it shows what a change did to the packet path
# where timings are noise (run it at two commits; every result stays in BENCHMARKS.md):
#   benches/instructions.sh                     meeting-300-smoke
#   benches/instructions.sh meeting-300-smoke   just these scenarios
# Under callgrind the server runs some 50 times slower: smoke scenarios only. The count
# covers every thread of the server in user space (not the kernel's send path, which the
# floor in each report measures), from two seconds into the window to one second before its end.
set -euo pipefail
cd "$(dirname "$0")/.."
scenarios=("$@")
[ ${#scenarios[@]} -gt 0 ] || scenarios=(meeting-300-smoke)
command -v valgrind >/dev/null 2>&1 || { echo "valgrind is not installed (apt-get install valgrind)" >&2; exit 2; }
source benches/common.sh
http=127.0.0.1:7780
out=benches/results/instructions
mkdir -p "$out"
tmp=$(mktemp -d)
server=""
loadtest=""
trap 'kill $server $loadtest 2>/dev/null || true; rm -rf "$tmp"' EXIT

# The server's datagrams sent so far (its own counter).
datagrams_out() {
  python3 -c 'import sys, urllib.request
text = urllib.request.urlopen(f"http://{sys.argv[1]}/metrics", timeout=5).read().decode()
print(sum(int(float(l.split()[-1])) for l in text.splitlines() if l.startswith("huiyi_udp_packets_out_total")))' "$http"
}

for name in "${scenarios[@]}"; do
  file=benches/scenarios/$name.toml
  [ -f "$file" ] || { echo "no scenario $file" >&2; exit 2; }
  duration=$(python3 -c 'import sys, tomllib; print(int(tomllib.load(open(sys.argv[1], "rb"))["duration_s"]))' "$file")
  valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$tmp/callgrind.out" \
    ./target/release/huiyi --http $http --media 127.0.0.1:7781 --log warn >"$tmp/server.log" 2>&1 &
  server=$!
  for _ in $(seq 1 200); do
    python3 -c 'import sys, urllib.request; urllib.request.urlopen(f"http://{sys.argv[1]}/healthz", timeout=1)' "$http" 2>/dev/null && break
    sleep 0.1
  done
  command="./target/release/loadtest --scenario $file --url http://$http --server-pid <valgrind pid> --report $out/$day-$commit-$name.report.json"
  echo "== $name under callgrind: $command"
  ./target/release/loadtest --scenario "$file" --url "http://$http" --server-pid "$server" \
    --report "$tmp/report.json" 2>"$tmp/loadtest.err" &
  loadtest=$!
  # The window opens with the generator's first live line ("t=   0s ...").
  until grep -q '^t=' "$tmp/loadtest.err" 2>/dev/null; do
    kill -0 "$loadtest" 2>/dev/null || { cat "$tmp/loadtest.err" >&2; exit 2; }
    sleep 0.2
  done
  # Two seconds in, the last joins' handshakes (whose crypto would swamp the count) are done.
  sleep 2
  callgrind_control -z "$server" >/dev/null 2>&1
  callgrind_control -i on "$server" >/dev/null 2>&1
  first=$(datagrams_out)
  sleep $((duration > 4 ? duration - 3 : 1))
  callgrind_control -i off "$server" >/dev/null 2>&1
  last=$(datagrams_out)
  callgrind_control -d "$server" >/dev/null 2>&1
  set +e
  wait "$loadtest"
  code=$?
  set -e
  kill "$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
  server=""
  loadtest=""
  cp "$tmp/report.json" "$out/$day-$commit-$name.report.json" 2>/dev/null || true
  # The dump taken with the count off holds the window's instructions (the file callgrind
  # writes at exit counts nothing more).
  dump=$(find "$tmp" -name 'callgrind.out.*' | head -1)
  [ -n "$dump" ] || { echo "callgrind wrote no dump for $name (server log: $tmp/server.log)" >&2; exit 2; }
  instructions=$(awk '/^totals:/ {print $2; exit}' "$dump")
  top=$(callgrind_annotate --threshold=60 "$dump" 2>/dev/null | awk '/file:function/ {on=1; next} on && NF {print}' | head -8 || true)
  # CALLGRIND_KEEP=dir keeps the dump for callgrind_annotate (--tree=caller shows who calls what).
  [ -z "${CALLGRIND_KEEP:-}" ] || cp "$dump" "$CALLGRIND_KEEP/$day-$commit-$name.callgrind"
  rm -f "$tmp"/callgrind.out*
  python3 - "$out/$day-$commit-$name.json" "$name" "$commit" "$machine" "$command" "$instructions" "$first" "$last" "$code" "$top" <<'PY'
import json, sys
path, name, commit, machine, command, instructions, first, last, code, top = sys.argv[1:]
datagrams = int(last) - int(first)
result = {"scenario": name, "commit": commit, "machine": machine, "command": command,
          "instructions": int(instructions), "datagrams_out": datagrams,
          "instructions_per_datagram": int(instructions) / datagrams if datagrams else None,
          "loadtest_exit_code": int(code), "top": [l.strip() for l in top.splitlines()]}
json.dump(result, open(path, "w"), indent=2)
print(f"{name}: {int(instructions):,} instructions for {datagrams:,} datagrams out = "
      f"{result['instructions_per_datagram'] or 0:,.0f} per datagram")
PY
done
python3 benches/render.py > BENCHMARKS.md
echo "BENCHMARKS.md rewritten"
