#!/usr/bin/env bash
# redis-benchmark against the cluster directly (--cluster) and through slotguard, in the
# same run on the same machine. Prints req/s, p50, p99, the ratio to direct, and requests
# per proxy CPU-second (from /proc/PID/stat). A second proxy with
# `durability.ack = "replicated"` on the same cluster gives the `replicated` rows (every
# test: writes wait for a replica, INCR travels as a script that runs it once, and reads
# are fenced by a WAIT too), with their ratio to direct and, last, to the `master` proxy.
#
#   benches/compare.sh [--peer NAME=PATH]... [requests] [clients]   (defaults: 200000 50)
#
# --peer runs another proxy on the same cluster in the same run, one worker thread, and
# adds its rows with a last column `sg/peer`: slotguard's requests per proxy CPU-second
# over the peer's. Known peers: predixy (built from its public source, outside this
# repository: make in a clone of github.com/joyieldInc/predixy; g++ 12 needs
# CXX="g++ -include ctime").
#
# Needs redis-server and redis-benchmark (scripts/install-deps). Builds the release binary.
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/peers.sh
peers=()
while [ "${1:-}" = --peer ]; do
  peers+=("$2")
  shift 2
done
N=${1:-200000}
C=${2:-50}
cargo build --release --quiet
port=$(free_port)
log=$(mktemp)
target/release/slotguard demo --listen "127.0.0.1:$port" >"$log" 2>&1 &
proxy=$!
trap 'kill $proxy 2>/dev/null; wait $proxy 2>/dev/null; rm -f "$log"' EXIT
for _ in $(seq 1 200); do grep -q "^connect with" "$log" && break; sleep 0.1; done
node=$(awk '/^cluster nodes:/ {print $3}' "$log")
[ -n "$node" ] || { cat "$log"; exit 1; }
nhost=${node%:*}; nport=${node##*:}
# The same cluster through a proxy that answers writes once the replicas have them.
rport=$(free_port)
rconf=$(mktemp)
printf '[durability]\nack = "replicated"\n' >"$rconf"
target/release/slotguard --config "$rconf" --listen "127.0.0.1:$rport" --seed "$node" >"$log.replicated" 2>&1 &
rproxy=$!
trap 'kill $proxy $rproxy 2>/dev/null; wait $proxy $rproxy 2>/dev/null; rm -f "$log" "$log".* "$rconf"' EXIT
for _ in $(seq 1 100); do redis-cli -p "$rport" ping >/dev/null 2>&1 && break; sleep 0.1; done
# Peers, each on a port of its own (pids and ports by name).
declare -A peer_pid peer_port
for spec in "${peers[@]}"; do
  name=${spec%%=*}; path=${spec#*=}
  pport=$(free_port)
  case "$name" in
    predixy)
      pconf=$(mktemp)
      predixy_conf "$pconf" "$pport" "$node" 1
      "$path" "$pconf" >"$log.peer.$name" 2>&1 &
      ;;
    *) echo "unknown peer $name (known: predixy)" >&2; exit 2 ;;
  esac
  peer_pid[$name]=$!
  peer_port[$name]=$pport
  wait_up "$pport"
done
trap 'kill $proxy $rproxy ${peer_pid[*]:-} 2>/dev/null; wait $proxy $rproxy 2>/dev/null; rm -f "$log" "$log".* "$rconf"' EXIT
hz=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/${1:-$proxy}/stat"; }

run() { # name target pipeline tests...
  local name=$1 target=$2 pipe=$3; shift 3
  local args=(-n "$N" -c "$C" -r 100000 -P "$pipe" --csv -t "$@")
  local pid=$proxy
  case "$target" in
    direct) args+=(--cluster -h "$nhost" -p "$nport") ;;
    replicated) args+=(-p "$rport"); pid=$rproxy ;;
    peer:*) args+=(-p "${peer_port[${target#peer:}]}"); pid=${peer_pid[${target#peer:}]} ;;
    *) args+=(-p "$port") ;;
  esac
  local before after
  before=$(cpu "$pid")
  redis-benchmark "${args[@]}" 2>"$log.$name.err" | grep -E '^"[A-Z]' | grep -v '^"test"' | tr -d '"' >"$log.$name"; [ -s "$log.$name" ] || { echo "redis-benchmark failed: ${args[*]}" >&2; cat "$log.$name.err" "$log" >&2; exit 1; }
  after=$(cpu "$pid")
  echo "$((after - before))" >"$log.$name.cpu"
}

printf '%-8s %-4s %-10s %12s %8s %8s %10s %16s %10s\n' test P target req/s p50_ms p99_ms vs_direct ops/proxy_cpu_s vs_master/sg_over_peer
for pipe in 1 16; do
  for t in set get mset incr; do
    run "d$t$pipe" direct "$pipe" "$t"
    run "p$t$pipe" proxy "$pipe" "$t"
    IFS=, read -r _ drps _ _ dp50 _ dp99 _ <"$log.d$t$pipe"
    IFS=, read -r _ prps _ _ pp50 _ pp99 _ <"$log.p$t$pipe"
    ticks=$(cat "$log.p$t$pipe.cpu")
    per_cpu=$(python3 -c "t=$ticks/$hz; print(f'{$N/t/1000:.0f}k' if t > 0 else 'n/a')")
    ratio=$(python3 -c "print(f'{$prps/$drps:.2f}')")
    printf '%-8s %-4s %-10s %12s %8s %8s %10s %16s %10s\n' "$t" "$pipe" direct "$drps" "$dp50" "$dp99" 1.00 - -
    printf '%-8s %-4s %-10s %12s %8s %8s %10s %16s %10s\n' "$t" "$pipe" proxy "$prps" "$pp50" "$pp99" "$ratio" "$per_cpu" 1.00
    for spec in "${peers[@]}"; do
      name=${spec%%=*}
      run "x$name$t$pipe" "peer:$name" "$pipe" "$t"
      IFS=, read -r _ xrps _ _ xp50 _ xp99 _ <"$log.x$name$t$pipe"
      xticks=$(cat "$log.x$name$t$pipe.cpu")
      xper_cpu=$(python3 -c "t=$xticks/$hz; print(f'{$N/t/1000:.0f}k' if t > 0 else 'n/a')")
      ratio=$(python3 -c "print(f'{$xrps/$drps:.2f}')")
      over=$(python3 -c "print(f'{$xticks/$ticks:.2f}' if $ticks > 0 else 'n/a')")
      printf '%-8s %-4s %-10s %12s %8s %8s %10s %16s %10s\n' "$t" "$pipe" "$name" "$xrps" "$xp50" "$xp99" "$ratio" "$xper_cpu" "$over"
    done
    run "r$t$pipe" replicated "$pipe" "$t"
    IFS=, read -r _ rrps _ _ rp50 _ rp99 _ <"$log.r$t$pipe"
    ticks=$(cat "$log.r$t$pipe.cpu")
    per_cpu=$(python3 -c "t=$ticks/$hz; print(f'{$N/t/1000:.0f}k' if t > 0 else 'n/a')")
    ratio=$(python3 -c "print(f'{$rrps/$drps:.2f}')")
    vs=$(python3 -c "print(f'{$rrps/$prps:.2f}')")
    printf '%-8s %-4s %-10s %12s %8s %8s %10s %16s %10s\n' "$t" "$pipe" replicated "$rrps" "$rp50" "$rp99" "$ratio" "$per_cpu" "$vs"
  done
done
