#!/usr/bin/env bash
# Set up and run the demo: Django on 127.0.0.1:8000 and the push server beside it
# (embedded defaults: SQLite, memory history). Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh

ensure_venv
echo "== installing twistedpush into .venv (developer install)"
"$VENV/bin/pip" install --quiet --disable-pip-version-check \
  --config-settings editable_mode=compat -e .

cd demo_site
"$VENV/bin/python" manage.py migrate -v0
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

"$VENV/bin/python" manage.py runserverpush &
pids+=($!)
"$VENV/bin/python" manage.py runserver 127.0.0.1:8000 --noreload &
pids+=($!)

for _ in $(seq 1 100); do
  if "$VENV/bin/python" -c "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/login/', timeout=1)" 2>/dev/null; then
    break
  fi
  sleep 0.2
done
cat <<'TXT'

  twistedpush demo is running:  http://127.0.0.1:8000/
    /       the live counter (open it in two tabs)
    /me/    a per-user score: log in as alice or bob, password "demo"
    /chat/  a chat over a send_update() channel
  Push server: http://127.0.0.1:8013 (WebSocket /ws, long-poll /poll, /health)
  Ctrl-C stops both servers.

TXT
wait -n
