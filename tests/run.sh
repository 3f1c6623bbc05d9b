#!/usr/bin/env bash
# Runs every test: the Rust unit and integration tests, then the real-client
# end-to-end suite (npm yjs + y-websocket against real server processes).
# Starts the local Redis it needs if none answers on 127.0.0.1:6379.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

ensure_redis() {
  if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
    echo "starting redis-server on 127.0.0.1:6379"
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
    for _ in $(seq 50); do redis-cli ping >/dev/null 2>&1 && break; sleep 0.1; done
  fi
}

ensure_redis

echo "== cargo build"
cargo build --locked --bins
echo "== cargo test"
cargo test --locked

echo "== end-to-end (tests/e2e)"
target_dir=${CARGO_TARGET_DIR:-$root/target}
export Y_REDIS_BIN="$target_dir/debug/y-redis"
cd tests/e2e
if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund
fi
npm test
