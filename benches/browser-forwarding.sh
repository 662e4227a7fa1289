#!/usr/bin/env bash
# Measures the server's CPU cost per forwarded RTP packet in a real meeting: a release
# huiyi process, N headless Chromium pages (fake camera + mic) in one room for HOLD
# seconds, then CPU seconds from /proc and packet counts from /metrics.
# Usage: benches/browser-forwarding.sh [pages=4] [hold-seconds=30]
set -euo pipefail
cd "$(dirname "$0")/.."
pages=${1:-4}
hold=${2:-30}
http=127.0.0.1:7790
media=127.0.0.1:7791
cargo build --release --bin huiyi >/dev/null 2>&1
./target/release/huiyi --http "$http" --media "$media" --log warn >/tmp/huiyi-bench.log 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
sleep 1
ticks=$(getconf CLK_TCK)
cpu() { awk -v t="$ticks" '{print ($14 + $15) / t}' "/proc/$pid/stat"; }
metric() { curl -s "http://$http/metrics" | awk -v m="$1" '$1 == m {print $2}'; }
(cd tests/browser && node meeting.mjs "http://$http" bench "$pages" 60 "$hold") >/tmp/huiyi-bench-node.log &
node_pid=$!
# Start counting once every page plays every other participant.
until grep -q ALL_PLAYING /tmp/huiyi-bench-node.log 2>/dev/null; do
  kill -0 $node_pid 2>/dev/null || { echo "browser pages failed:"; cat /tmp/huiyi-bench-node.log; exit 1; }
  sleep 0.2
done
cpu0=$(cpu); fwd0=$(metric huiyi_rtp_forwarded_total); out0=$(metric huiyi_udp_packets_out_total)
sleep "$hold"
cpu1=$(cpu); fwd1=$(metric huiyi_rtp_forwarded_total); out1=$(metric huiyi_udp_packets_out_total)
wait $node_pid || true
rss=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
awk -v c0="$cpu0" -v c1="$cpu1" -v f0="$fwd0" -v f1="$fwd1" -v o0="$out0" -v o1="$out1" -v s="$hold" \
    -v p="$pages" -v rss="$rss" -v date="$(date -u +%F)" -v commit="$(git rev-parse --short HEAD)" 'BEGIN {
  cpu = c1 - c0; fwd = f1 - f0; out = o1 - o0;
  printf "date %s, commit %s, %d Chromium pages, %d s, %d cores\n", date, commit, p, s, '"$(nproc)"';
  printf "server CPU: %.2f s (%.1f%% of one core)\n", cpu, 100 * cpu / s;
  printf "RTP forwarded: %d (%.0f/s), datagrams sent: %d (%.0f/s)\n", fwd, fwd / s, out, out / s;
  printf "CPU per forwarded packet: %.1f us; forwarded packets per CPU-second: %.0f\n", 1e6 * cpu / fwd, fwd / cpu;
  printf "peak RSS: %.1f MiB\n", rss / 1024;
}'
