#!/usr/bin/env bash
# Prepare everything bench/ needs, from a fresh checkout. Idempotent: a second run only checks,
# and redoes a step when its input changed.
#
#   bench/setup.sh                                  the project target only
#   BENCH_PEERS=/path/to/peers bench/setup.sh       also the node and vanilla peers (PYTHON=python3.11)
#
# The peers (the Node socket.io gateway and stock python-socketio) are the organisation's
# benchmark yardstick's, not part of this repository: BENCH_PEERS names the folder that holds
# their node-socketio/ and python-socketio-vanilla/ (see README.md).
#
# Makes:
#   bench/.venv                 load generator, vanilla peer + its producer, py-spy (requirements.txt)
#   bench/.venv-project         this checkout, `pip install -e ..` (requirements-project.txt)
#   bench/.peers/node-socketio  a copy of $BENCH_PEERS/node-socketio with node_modules (npm ci)
# and installs redis-server / node / npm with apt-get when they are missing (as scripts/test does).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$HERE")
PEERS=${BENCH_PEERS:-}
PY=${PYTHON:-python3}
cd "$HERE"

say() { printf 'setup: %s\n' "$*"; }
sha() { sha256sum "$@" | sha256sum | cut -c1-16; }

if [ -n "$PEERS" ]; then
  [ -d "$PEERS/node-socketio" ] && [ -d "$PEERS/python-socketio-vanilla" ] || {
    echo "setup: BENCH_PEERS=$PEERS holds no node-socketio/ and python-socketio-vanilla/" >&2
    exit 2
  }
else
  say "BENCH_PEERS is not set: preparing the project target only (node and vanilla need the peers)"
fi

# -- system packages ---------------------------------------------------------------------------
missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
command -v taskset >/dev/null || missing+=(util-linux)
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  say "installing system packages: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# -- python venvs ------------------------------------------------------------------------------
# venv DIR REQUIREMENTS STAMP_INPUTS...: (re)install when the inputs' hash changed.
venv() {
  local dir=$1 req=$2; shift 2
  local want; want=$(sha "$req" "$@")
  [ -x "$dir/bin/python" ] || { say "creating $dir"; "$PY" -m venv "$dir"; }
  if [ "$(cat "$dir/.bench-stamp" 2>/dev/null)" != "$want" ]; then
    say "installing $req into $dir"
    "$dir/bin/python" -m pip install -q --upgrade pip
    "$dir/bin/python" -m pip install -q -r "$req"
    echo "$want" > "$dir/.bench-stamp"
  else
    say "$dir is up to date"
  fi
}
venv .venv requirements.txt
venv .venv-project requirements-project.txt "$REPO/pyproject.toml"
.venv-project/bin/python -c "from publisher import Publisher; import gateway" \
  || { echo "setup: the project does not import in .venv-project" >&2; exit 1; }

# -- the node peer -----------------------------------------------------------------------------
# A copy, because the peers' folder may be read-only and npm ci writes node_modules beside
# package.json.
if [ -n "$PEERS" ]; then
  peer=.peers/node-socketio
  mkdir -p "$peer"
  for f in "$PEERS"/node-socketio/*; do
    [ -f "$f" ] || continue
    cmp -s "$f" "$peer/$(basename "$f")" || install -m 644 "$f" "$peer/$(basename "$f")"
  done
  want=$(sha "$peer/package-lock.json")
  if [ "$(cat "$peer/node_modules/.bench-stamp" 2>/dev/null)" != "$want" ]; then
    say "npm ci in $peer"
    (cd "$peer" && npm ci --no-audit --no-fund --loglevel=error)
    echo "$want" > "$peer/node_modules/.bench-stamp"
  else
    say "$peer/node_modules is up to date"
  fi
fi

# -- checks ------------------------------------------------------------------------------------
[ "$(nproc)" -ge 2 ] || say "WARNING: $(nproc) CPU; run.py needs 2 (gateway on CPU 0, driver on CPU 1)"
.venv/bin/py-spy --version >/dev/null 2>&1 || say "WARNING: py-spy does not run; --profile will not work"
say "ready: $(redis-server --version | cut -d' ' -f3), node $(node --version), $(.venv/bin/python --version)"
say "try:   .venv/bin/python run.py --target project --scenario targeted --clients 200 --events 2000"
