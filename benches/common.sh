# Sourced by the benches/ scripts (from the checkout's top): builds this checkout's release
# binaries (libopus first: the load generator needs it) and names what every result records:
# the commit (+dirty when the server, the generator or Janus's settings have uncommitted
# changes), the time
# of the run and the machine.
./scripts/need opus
cargo build --release -p huiyi -p huiyi-loadtest >/dev/null
commit=$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- sfu signaling loadtest src proto benches/janus || echo "+dirty")
day=$(date -u +%FT%H%M)
machine="$(nproc) cores, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), kernel $(uname -r)"
