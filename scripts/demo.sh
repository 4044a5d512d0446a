#!/usr/bin/env bash
# Set up and run the demo: Django on 127.0.0.1:8000 and the push server beside it
# (embedded defaults: SQLite, memory history), both on loopback only. Ctrl-C stops both.
# DEMO_PORT, DEMO_PUSH_PORT and DEMO_NOTIFIER_PORT choose other ports.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. scripts/env.sh

DJANGO_PORT="${DEMO_PORT:-8000}"
PUSH_PORT="${DEMO_PUSH_PORT:-8013}"  # demo_site/settings.py reads the same variable

# The two servers, started from demo_site/ in the background (exec: $! is the server
# itself). The tests (DemoSite in tests/test_browser.py) source this file to run them.
serve_push() {
  exec "$VENV/bin/python" manage.py runserverpush --port "tcp:$PUSH_PORT:interface=127.0.0.1"
}
serve_django() {
  exec "$VENV/bin/python" manage.py runserver "127.0.0.1:$DJANGO_PORT" --noreload
}

main() {
  ensure_venv
  npm_ci
  echo "== installing twistedpush into .venv (developer install)"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check \
    --config-settings editable_mode=compat -e ".[examples]"

  cd demo_site
  "$VENV/bin/python" manage.py migrate -v0
  pids=()
  cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
  trap cleanup EXIT INT TERM

  serve_push &
  pids+=($!)
  serve_django &
  pids+=($!)

  local url="http://127.0.0.1:$DJANGO_PORT"
  for _ in $(seq 1 100); do
    if "$VENV/bin/python" -c "import urllib.request as u; u.urlopen('$url/login/', timeout=1)" \
      2>/dev/null; then
      break
    fi
    sleep 0.2
  done
  cat <<TXT

  twistedpush demo is running:  $url/
    /       the live counter (open it in two tabs)
    /me/    a per-user score: log in as alice or bob, password "demo"
    /chat/  a chat over a send_update() channel, with how many are viewing it
    /wamp/  the same chat through AutobahnJS (WAMP)
  Push server: http://127.0.0.1:$PUSH_PORT (WebSocket /ws, long-poll /poll, /health)
  Ctrl-C stops both servers.

TXT
  wait -n
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  main
fi
