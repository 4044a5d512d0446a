#!/usr/bin/env bash
# One command for the benchmarks: install the peers (Nchan, Django Channels, Redis),
# then run every scenario against every server. Extra arguments go to bench.py
# (--smoke for tiny sizes).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh

apt_install redis-server redis-server
apt_install nginx nginx
if [ ! -e /usr/lib/nginx/modules/ngx_nchan_module.so ]; then
  echo "== installing libnginx-mod-nchan (apt-get)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libnginx-mod-nchan >/dev/null
fi

ensure_venv
echo "== installing twistedpush with the bench extras into .venv"
"$VENV/bin/pip" install --quiet --disable-pip-version-check \
  --config-settings editable_mode=compat -e ".[bench]"
ulimit -n 30000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
exec "$VENV/bin/python" bench/bench.py "$@"
