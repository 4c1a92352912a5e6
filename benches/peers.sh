# Shared by the benches (sourced): a free port, the peers' set-up, the demo cluster, and
# waiting for a proxy to answer.

# A TCP port free on 127.0.0.1 now.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Writes predixy's configuration to `file`: one worker thread on `port`, the cluster at
# `node`, looking at it every `refresh` seconds.
predixy_conf() { # file port node refresh
  {
    printf 'Name bench\nBind 127.0.0.1:%s\nWorkerThreads 1\n' "$2"
    printf 'LogVerbSample 0\nLogDebugSample 0\nLogInfoSample 0\n'
    printf 'Authority {\n  Auth {\n    Mode admin\n  }\n}\n'
    printf 'ClusterServerPool {\n  MasterReadPriority 100\n  RefreshInterval %s\n  Servers {\n    + %s\n  }\n}\n' "$4" "$3"
  } >"$1"
}

# Starts `slotguard demo` (3 masters + 3 replicas) logging to $dir/demo.log, adds its pid
# to the caller's `pids`, and sets `node` to one of its nodes once it is up.
start_demo() {
  local port
  port=$(free_port)
  target/release/slotguard demo --listen "127.0.0.1:$port" >"$dir/demo.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 200); do grep -q "^connect with" "$dir/demo.log" && break; sleep 0.1; done
  node=$(awk '/^cluster nodes:/ {print $3}' "$dir/demo.log")
  [ -n "$node" ] || { cat "$dir/demo.log"; exit 1; }
}

# Builds slotguard, makes the scratch directory `dir` (removed on exit, every pid in `pids`
# killed) and starts the demo cluster (`start_demo`).
bench_setup() {
  cargo build --release --quiet
  dir=$(mktemp -d)
  pids=()
  trap 'kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$dir"' EXIT
  start_demo
}

# Waits until the proxy on `port` answers a SET, for `tries` tenths of a second (100
# unless told); one that never does ends the bench.
wait_up() { # port [tries]
  for _ in $(seq 1 "${2:-100}"); do redis-cli -p "$1" set warm 1 2>/dev/null | grep -q OK && return; sleep 0.1; done
  echo "proxy on $1 never answered" >&2; exit 1
}
