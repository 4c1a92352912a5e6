#!/usr/bin/env bash
# How slotguard's throughput grows with worker threads: `threads = 1` and `threads = 2`
# side by side on one cluster (3 masters + 3 replicas, `slotguard demo`), in the same run,
# redis-benchmark with 50 and 200 clients at -P 1 and -P 16. Prints req/s, p50, p99 and
# the proxy's CPU seconds for each, and the 2-thread req/s over the 1-thread.
#
#   benches/threads.sh [requests]     (default: 400000)
#
# On a machine with few cores the benchmark, the six servers and the proxy share them:
# what this shows there is how much of the proxy's work a second thread takes on, not
# what a bigger machine would reach.
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/peers.sh
N=${1:-400000}
bench_setup
declare -A pid_of port_of
for threads in 1 2; do
  port_of[$threads]=$(free_port)
  printf 'threads = %s\n' "$threads" >"$dir/t$threads.toml"
  target/release/slotguard --config "$dir/t$threads.toml" --listen "127.0.0.1:${port_of[$threads]}" \
    --seed "$node" >"$dir/t$threads.log" 2>&1 &
  pid_of[$threads]=$!
  pids+=($!)
  wait_up "${port_of[$threads]}"
done
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
printf '%-5s %-3s %-7s %-7s %12s %8s %8s %8s %8s\n' test P clients threads req/s p50_ms p99_ms cpu_s 2t/1t
for pipe in 1 16; do
  for t in set get; do
    for c in 50 200; do
      declare -A rps=()
      for threads in 1 2; do
        before=$(cpu "${pid_of[$threads]}")
        line=$(redis-benchmark -p "${port_of[$threads]}" -n "$N" -c "$c" -r 100000 -P "$pipe" -t "$t" \
          --threads 2 --csv 2>/dev/null | grep -E '^"[A-Z]' | grep -v '^"test"' | tr -d '"')
        after=$(cpu "${pid_of[$threads]}")
        IFS=, read -r _ r _ _ p50 _ p99 _ <<<"$line"
        rps[$threads]=$r
        ratio=-
        [ "$threads" = 2 ] && ratio=$(python3 -c "print(f'{${rps[2]}/${rps[1]}:.2f}')")
        printf '%-5s %-3s %-7s %-7s %12s %8s %8s %8s %8s\n' "$t" "$pipe" "$c" "$threads" "$r" "$p50" "$p99" \
          "$(python3 -c "print(f'{($after - $before) / $hz:.2f}')")" "$ratio"
      done
    done
  done
done
