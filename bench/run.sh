#!/usr/bin/env bash
# One command for the benchmarks: install the peers (Nchan, Django Channels, Redis,
# Crossbar.io), then run every scenario against every server, then the crowd
# (bench/crowd.py). Extra arguments go to bench.py (--smoke for tiny sizes, --only
# PEER... for some servers); the crowd takes --smoke only.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh

apt_install redis-server redis-server nginx nginx
if [ ! -e /usr/lib/nginx/modules/ngx_nchan_module.so ]; then
  echo "== installing libnginx-mod-nchan (apt-get)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libnginx-mod-nchan >/dev/null
fi

ensure_venv
echo "== installing twistedpush with the bench extras into .venv"
"$VENV/bin/pip" install --quiet --disable-pip-version-check \
  --config-settings editable_mode=compat -e ".[bench]"
# Crossbar.io (a peer for WAMP fan-out) in a venv of its own: it pins its own Twisted
# and autobahn. numpy<2: the bjdata wheel it pulls in is built against numpy 1 and
# stops the router worker at import under numpy 2. Installed once (the stamp file);
# if pip fails, the run goes on and the report says why (from install.log).
CROSSBAR_VENV="$PWD/.venv-crossbar"
if [ ! -e "$CROSSBAR_VENV/installed" ]; then
  echo "== installing Crossbar.io into $CROSSBAR_VENV (pip, once; about a minute)"
  rm -rf "$CROSSBAR_VENV"
  if "$PYTHON" -m venv "$CROSSBAR_VENV" \
    && "$CROSSBAR_VENV/bin/pip" install --disable-pip-version-check crossbar "numpy<2" \
      >"$CROSSBAR_VENV/install.log" 2>&1; then
    touch "$CROSSBAR_VENV/installed"
  else
    echo "== Crossbar.io could not be installed (see $CROSSBAR_VENV/install.log): the report says so"
  fi
fi

ulimit -n 30000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
"$VENV/bin/python" bench/bench.py "$@"

# Then the crowd (bench/crowd.py): 50,000 idle WebSockets on one process, or as many
# as this machine lets one process open (its hard limit on open files, less 1,000).
crowd=(--connections 50000)
for argument in "$@"; do
  [ "$argument" = --smoke ] && crowd=(--smoke)
done
if [ "${crowd[0]}" != --smoke ]; then
  limit="$(ulimit -Hn)"
  if [ "$limit" != unlimited ] && [ "$limit" -lt 51000 ]; then
    echo "== this machine lets a process open $limit files: the crowd is $((limit - 1000)) connections, not 50,000"
    crowd=(--connections "$((limit - 1000))")
  fi
  ulimit -n "$(ulimit -Hn)"
fi
exec "$VENV/bin/python" bench/crowd.py "${crowd[@]}"
