#!/usr/bin/env bash
# Runs one scenario against Huiyi and against Janus 1.1.2 (Debian's `janus`: VideoRoom for a
# meeting, VideoRoom forwarding to Streaming for a class) on this machine, one after the other in one run, and prints both rows and their
# ratios; BENCHMARKS.md is rewritten with them:
#   benches/compare.sh meeting-100
#   RUNS=3 benches/compare.sh meeting-100    three pairs, and the ratios' median and range
# Equal settings: each server is a fresh process free to use every CPU (Huiyi with its
# default shards, Janus with one event loop per CPU), reached on the same veth address
# (Janus never offers loopback candidates), by the same generator with a socket per client.
# Janus runs with benches/janus/ (its best settings for this: event loops, NACK queues sized
# to the RTT, warnings-only logging, nothing but VideoRoom, Streaming and WebSockets loaded;
# docs/loadtest.md). Makes the veth as root (through sudo when not root); installs Debian's
# janus and libopus-dev when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
name=${1:?usage: benches/compare.sh SCENARIO (a name in benches/scenarios/)}
file=benches/scenarios/$name.toml
[ -f "$file" ] || { echo "no scenario $file" >&2; exit 2; }
# The veth needs root; nothing else does.
as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}
./scripts/need janus
source benches/common.sh
# (`janus --version` prints its version and exits 1.)
janus_version=$(janus --version 2>/dev/null | sed -n 's/^Janus version: .*(\(.*\))$/\1/p' | head -1 || true)
addr=10.213.0.1
ifname=hycmp0
secret=compare-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
# RUNS=N: N pairs turn about, so the spread of the ratio shows beside it.
runs=${RUNS:-1}
dir=benches/results/compare/$name
mkdir -p "$dir"
stem=$dir/$day-$commit
tmp=$(mktemp -d)
pids=()
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
  as_root ip link del "$ifname" 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

# An address of this machine's own on a veth pair: traffic to it stays on this machine,
# like loopback, and Janus gathers a candidate there.
as_root ip link del "$ifname" 2>/dev/null || true
as_root ip link add "$ifname" type veth peer name "${ifname}p"
as_root ip addr add "$addr/32" dev "$ifname"
as_root ip link set "$ifname" up
as_root ip link set "${ifname}p" up

# Wait (at most 10 s) until something accepts TCP connections on $1:$2.
wait_tcp() {
  for _ in $(seq 1 100); do
    python3 -c 'import socket, sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), 1).close()' "$1" "$2" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing answered on $1:$2" >&2
  return 1
}

# Huiyi: a secret (its HTTP is not on loopback) and no cap on connections per address (every
# client of the generator comes from this one address).
printf '[auth]\napi_secret = "%s"\n[limits]\nmax_connections_per_ip = 0\n' "$secret" >"$tmp/huiyi.toml"
# Janus: benches/janus/ with this run's address and one event loop per CPU.
cp -r benches/janus "$tmp/janus"
sed -i "s/10\.213\.0\.1/$addr/; s/event_loops = .*/event_loops = $(nproc)/" "$tmp/janus/janus.jcfg" "$tmp/janus/janus.transport.websockets.jcfg"

# The scenario against server $1 (huiyi or janus, running as pid $2), results under the
# stem $3, the generator reaching it with the rest of the arguments; its exit code in
# `code`, and the server stopped (a server that died mid-run leaves the comparison going).
measure() {
  local who=$1 pid=$2 out=$3
  shift 3
  set +e
  ./target/release/loadtest --scenario "$file" "$@" --server-pid "$who=$pid" \
    --report "$out.$who.json" --plot "$out.$who.svg"
  code=$?
  set -e
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  pids=()
  [ "$code" -ne 0 ] || rm -f "$out.$who.log"
}

# One pair: Huiyi, then Janus, each a fresh process; results under the stem $1.
run_pair() {
  local out=$1
  ./target/release/huiyi --config "$tmp/huiyi.toml" --http $addr:7780 --media $addr:7781 --log warn \
    >"$out.huiyi.log" 2>&1 &
  pids+=($!)
  local huiyi_pid=$!
  wait_tcp $addr 7780
  huiyi_cmd="./target/release/loadtest --scenario $file --url http://$addr:7780 --secret <secret> --server-pid huiyi=<pid> --report $out.huiyi.json --plot $out.huiyi.svg"
  echo "== $name against Huiyi: $huiyi_cmd"
  measure huiyi "$huiyi_pid" "$out" --url "http://$addr:7780" --secret "$secret"
  huiyi_code=$code

  janus -F "$tmp/janus" -C "$tmp/janus/janus.jcfg" -E "$ifname" -o >"$out.janus.log" 2>&1 &
  pids+=($!)
  local janus_pid=$!
  wait_tcp $addr 8188
  janus_cmd="./target/release/loadtest --scenario $file --janus ws://$addr:8188 --server-pid janus=<pid> --report $out.janus.json --plot $out.janus.svg"
  echo "== $name against Janus $janus_version: $janus_cmd"
  measure janus "$janus_pid" "$out" --janus "ws://$addr:8188"
  janus_code=$code

  python3 - "$out.meta.json" "$huiyi_cmd" "$janus_cmd" "$commit" "$machine" "$janus_version" "$huiyi_code" "$janus_code" "$(nproc)" "$runs" "$name" "$(basename "$stem")" <<'PY'
import json, sys
path, huiyi_cmd, janus_cmd, commit, machine, janus_version, huiyi_code, janus_code, loops, runs, name, run = sys.argv[1:]
command = ("" if runs == "1" else f"RUNS={runs} ") + "benches/compare.sh " + name
json.dump({"command": command, "huiyi_command": huiyi_cmd,
           "janus_command": janus_cmd, "commit": commit, "machine": machine,
           "janus_version": janus_version, "janus_event_loops": int(loops),
           "exit_codes": {"huiyi": int(huiyi_code), "janus": int(janus_code)},
           "run": run, "runs": int(runs)},
          open(path, "w"), indent=2)
PY
  echo
  python3 benches/render.py --pair "$out"
}

for i in $(seq 1 "$runs"); do
  if [ "$runs" -eq 1 ]; then run_pair "$stem"; else run_pair "$stem-$i"; fi
done
python3 benches/render.py > BENCHMARKS.md
echo "BENCHMARKS.md rewritten"
