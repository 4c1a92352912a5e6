#!/usr/bin/env bash
# redis-benchmark against the cluster directly (--cluster) and through slotguard, in the
# same run on the same machine. Prints req/s, p50, p99, the ratio to direct, and requests
# per proxy CPU-second (from /proc/PID/stat).
#
#   benches/compare.sh [requests] [clients]      (defaults: 200000 50)
#
# Needs redis-server and redis-benchmark (scripts/install-deps). Builds the release binary.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-200000}
C=${2:-50}
cargo build --release --quiet
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
log=$(mktemp)
target/release/slotguard demo --listen "127.0.0.1:$port" >"$log" 2>&1 &
proxy=$!
trap 'kill $proxy 2>/dev/null; wait $proxy 2>/dev/null; rm -f "$log"' EXIT
for _ in $(seq 1 200); do grep -q "^connect with" "$log" && break; sleep 0.1; done
node=$(awk '/^cluster nodes:/ {print $3}' "$log")
[ -n "$node" ] || { cat "$log"; exit 1; }
nhost=${node%:*}; nport=${node##*:}
hz=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$proxy/stat"; }

run() { # name target pipeline tests...
  local name=$1 target=$2 pipe=$3; shift 3
  local args=(-n "$N" -c "$C" -r 100000 -P "$pipe" --csv -t "$@")
  if [ "$target" = direct ]; then args+=(--cluster -h "$nhost" -p "$nport"); else args+=(-p "$port"); fi
  local before after
  before=$(cpu)
  redis-benchmark "${args[@]}" 2>"$log.$name.err" | grep -E '^"[A-Z]' | grep -v '^"test"' | tr -d '"' >"$log.$name"; [ -s "$log.$name" ] || { echo "redis-benchmark failed: ${args[*]}" >&2; cat "$log.$name.err" "$log" >&2; exit 1; }
  after=$(cpu)
  echo "$((after - before))" >"$log.$name.cpu"
}

printf '%-8s %-4s %-6s %12s %8s %8s %10s %16s\n' test P target req/s p50_ms p99_ms vs_direct ops/proxy_cpu_s
for pipe in 1 16; do
  for t in set get mset; do
    run "d$t$pipe" direct "$pipe" "$t"
    run "p$t$pipe" proxy "$pipe" "$t"
    IFS=, read -r _ drps _ _ dp50 _ dp99 _ <"$log.d$t$pipe"
    IFS=, read -r _ prps _ _ pp50 _ pp99 _ <"$log.p$t$pipe"
    ticks=$(cat "$log.p$t$pipe.cpu")
    per_cpu=$(python3 -c "t=$ticks/$hz; print(f'{$N/t/1000:.0f}k' if t > 0 else 'n/a')")
    ratio=$(python3 -c "print(f'{$prps/$drps:.2f}')")
    printf '%-8s %-4s %-6s %12s %8s %8s %10s %16s\n' "$t" "$pipe" direct "$drps" "$dp50" "$dp99" 1.00 -
    printf '%-8s %-4s %-6s %12s %8s %8s %10s %16s\n' "$t" "$pipe" proxy "$prps" "$pp50" "$pp99" "$ratio" "$per_cpu"
  done
done
rm -f "$log".*
