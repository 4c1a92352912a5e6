#!/usr/bin/env bash
# What one request costs a proxy, counted rather than timed, so that it repeats on a noisy
# machine: instructions and allocations (valgrind's callgrind: the calls to the
# allocator) and system calls (strace -c) per request, for SET, GET and MSET (10 keys,
# cross-slot) at -P 1 and -P 16, through slotguard and, in the same run, through any peer
# given.
#
#   benches/counts.sh [--peer predixy=PATH]... [--check FILE] [requests]   (default: 20000)
#
# --check FILE is the regression check: it fails when slotguard's instructions per
# request on a row exceed FILE's (benches/counts.baseline, a saved run of this script) by
# more than 5%. Instruction counts repeat to within about 1% here, whatever else the
# machine is doing.
#
# SLOTGUARD=/path/to/slotguard counts another build (an older commit's, say) instead of
# this tree's.
# Each proxy runs on a cluster of 3 masters + 3 replicas (`slotguard demo`), one worker
# thread, looking at the cluster once a minute: a look's cost is per second, not per
# request, and under valgrind a run lasts long enough for it to swamp the requests'. redis-benchmark warms it (2,000 requests), the counters are zeroed, then
# `requests` more are counted: start-up and idle work are left out. Needs valgrind and
# strace (apt-get install valgrind strace).
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/peers.sh
peers=()
check=
while [ "${1:-}" = --peer ] || [ "${1:-}" = --check ]; do
  case "$1" in
    --peer) peers+=("$2") ;;
    --check) check=$2 ;;
  esac
  shift 2
done
N=${1:-20000}
WARM=2000
bench_setup

# The command line that runs proxy `name` on `port`.
command_for() { # name port
  local name=$1 port=$2
  case "$name" in
    slotguard)
      printf '[topology]\nrefresh_interval = "60s"\n' >"$dir/slotguard.toml"
      echo "${SLOTGUARD:-target/release/slotguard} --config $dir/slotguard.toml --listen 127.0.0.1:$port --seed $node"
      ;;
    predixy)
      local conf="$dir/predixy.$port.conf"
      predixy_conf "$conf" "$port" "$node" 60
      echo "${paths[predixy]} $conf"
      ;;
    *) echo "unknown peer $name (known: predixy)" >&2; exit 2 ;;
  esac
}
declare -A paths
names=(slotguard)
for spec in "${peers[@]}"; do
  paths[${spec%%=*}]=${spec#*=}
  names+=("${spec%%=*}")
done

bench() { # port pipeline test requests
  redis-benchmark -p "$1" -n "$4" -c 50 -r 100000 -P "$2" -t "$3" -q >/dev/null 2>&1
}

# Instructions: the proxy under callgrind; counters zeroed after the warm-up, dumped after
# the counted requests.
instructions() { # name pipeline test
  local p
  p=$(free_port)
  local out="$dir/cg.$1.$2.$3"
  # shellcheck disable=SC2046
  valgrind --tool=callgrind --callgrind-out-file="$out.%p" $(command_for "$1" "$p") >"$dir/vg.log" 2>&1 &
  local vg=$!
  pids+=("$vg")
  wait_up "$p" 600
  bench "$p" "$2" "$3" "$WARM"
  callgrind_control -z "$vg" >/dev/null 2>&1
  bench "$p" "$2" "$3" "$N"
  callgrind_control -d "$vg" >/dev/null 2>&1
  kill "$vg"; wait "$vg" 2>/dev/null || true
  # The dump after the counted requests is the last but one file (the last is written at exit).
  local dump
  dump=$(ls -v "$out".*.* 2>/dev/null | tail -1)
  printf '%s %s\n' "$(awk -v n="$N" '/^(summary|totals):/ {print int($2 / n); exit}' "$dump")" \
    "$(benches/allocations.py "$dump" "$N")"
}

# System calls: strace -c attached for the counted requests only.
syscalls() { # name pipeline test
  local p
  p=$(free_port)
  # shellcheck disable=SC2046
  $(command_for "$1" "$p") >"$dir/proxy.log" 2>&1 &
  local pid=$!
  pids+=("$pid")
  wait_up "$p" 600
  bench "$p" "$2" "$3" "$WARM"
  strace -c -f -q -p "$pid" -o "$dir/strace" &
  local st=$!
  sleep 0.5
  bench "$p" "$2" "$3" "$N"
  kill -INT "$st"; wait "$st" 2>/dev/null || true
  kill "$pid"; wait "$pid" 2>/dev/null || true
  awk -v n="$N" '$NF == "total" {printf "%.2f\n", $4 / n}' "$dir/strace"
}

printf '%-6s %-3s %-10s %14s %12s %12s\n' test P proxy instr/req allocs/req syscalls/req | tee "$dir/table"
for pipe in 1 16; do
  for t in set get mset; do
    for name in "${names[@]}"; do
      read -r instr allocs < <(instructions "$name" "$pipe" "$t")
      printf '%-6s %-3s %-10s %14s %12s %12s\n' "$t" "$pipe" "$name" "$instr" "$allocs" \
        "$(syscalls "$name" "$pipe" "$t")" | tee -a "$dir/table"
    done
  done
done
if [ -n "$check" ]; then
  # Rows of slotguard: test, P, instructions; each against the baseline's same row.
  awk 'NR == FNR { if ($3 == "slotguard") base[$1 " " $2] = $4; next }
       $3 == "slotguard" && ($1 " " $2) in base {
         limit = base[$1 " " $2] * 1.05
         if ($4 > limit) { printf "regression: %s -P %s: %d instructions a request, baseline %d\n", $1, $2, $4, base[$1 " " $2]; bad = 1 }
       }
       END { exit bad }' "$check" "$dir/table" && echo "within 5% of $check"
fi
