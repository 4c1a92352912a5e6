#!/usr/bin/env bash
# Where a proxy's CPU goes: user and system time (ticks of /proc/PID/stat) of slotguard
# and of a peer, each given the same redis-benchmark run in turn on one cluster (3 masters
# + 3 replicas, `slotguard demo`), SET, GET and MSET (10 keys, cross-slot) at -P 1 and
# -P 16, with requests per CPU-second and p99. The system part is the kernel's TCP work
# for the proxy's reads and writes: what no proxy code can take away.
#
#   benches/cpu_split.sh --peer predixy=PATH [requests]     (default: 1000000)
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/peers.sh
[ "${1:-}" = --peer ] || { echo "usage: $0 --peer predixy=PATH [requests]" >&2; exit 2; }
peer=${2#*=}
N=${3:-1000000}
bench_setup
sport=$(free_port)
target/release/slotguard --listen "127.0.0.1:$sport" --seed "$node" >"$dir/sg.log" 2>&1 &
spid=$!
pids+=($!)
pport=$(free_port)
predixy_conf "$dir/peer.conf" "$pport" "$node" 1
"$peer" "$dir/peer.conf" >"$dir/peer.log" 2>&1 &
ppid=$!
pids+=($!)
wait_up "$sport"
wait_up "$pport"
ticks() { awk '{print $14, $15}' "/proc/$1/stat"; }
printf '%-5s %-3s %-10s %8s %8s %14s %8s\n' test P proxy user sys req/cpu_s p99_ms
for pipe in 1 16; do
  for t in set get mset; do
    for who in slotguard peer; do
      pid=$spid; p=$sport
      [ "$who" = peer ] && { pid=$ppid; p=$pport; }
      read -r u0 s0 < <(ticks "$pid")
      line=$(redis-benchmark -p "$p" -n "$N" -c 50 -r 100000 -P "$pipe" -t "$t" --csv 2>/dev/null \
        | grep -E '^"[A-Z]' | grep -v '^"test"' | tr -d '"')
      read -r u1 s1 < <(ticks "$pid")
      IFS=, read -r _ _ _ _ _ _ p99 _ <<<"$line"
      hz=$(getconf CLK_TCK)
      printf '%-5s %-3s %-10s %8s %8s %14s %8s\n' "$t" "$pipe" "$who" $((u1 - u0)) $((s1 - s0)) \
        "$(python3 -c "t = ($u1 - $u0 + $s1 - $s0) / $hz; print(int($N / t) if t > 0 else 'n/a')")" "$p99"
    done
  done
done
