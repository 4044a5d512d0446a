#!/usr/bin/env bash
# Set up and run the push server with embedded defaults (memory history).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh

ensure_venv
"$VENV/bin/pip" install --quiet --disable-pip-version-check \
  --config-settings editable_mode=compat -e .
echo "== push server: WebSocket ws://127.0.0.1:8013/ws, long-poll http://127.0.0.1:8013/poll"
echo "== AMP notifier on 127.0.0.1:8014; channels demo.* are public. Ctrl-C stops."
exec "$VENV/bin/twistd" --pidfile= -n serverpush --public 'demo.*' "$@"
