#!/usr/bin/env bash
# Install everything the tests need and run every test: lint, types, the browser
# client's Node tests, unit, integration, browser, then a smoke run of the
# benchmarks (tiny sizes, every peer) so that bench/ keeps working. Usage: bash scripts/test.sh [pytest args...]
# (with pytest args, only pytest runs, with them).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh

# Integration tests start their own redis-server on a free port, and browser tests
# drive Debian's chromium: both must be installed (tests fail, never skip, without them).
# faketime and gcc: a Redis shard with its clock moved by libfaketime
# (tests/test_shards*.py), with a malloc shim the tests compile. nginx and openssl:
# docs/deploy/'s nginx site is checked with nginx -t and run in front of a push server
# (tests/test_deploy.py; a self-signed certificate).
apt_install redis-server redis-server chromium chromium faketime faketime gcc gcc \
  nginx nginx openssl openssl

ensure_venv
npm_ci
echo "== installing twistedpush and test tools into .venv (developer install)"
"$VENV/bin/pip" install --quiet --disable-pip-version-check \
  --config-settings editable_mode=compat -e ".[test]"

echo "== ruff"
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .

echo "== mypy (twistedpush/, django_adapter/; settings in pyproject.toml)"
"$VENV/bin/mypy"

if [ "$#" -eq 0 ]; then
  # The browser client's unit tests: Node's own runner, no npm packages, no browser.
  command -v node >/dev/null || { echo "node is not installed: the client tests cannot run" >&2; exit 1; }
  echo "== node --test tests/js/"
  node --test tests/js/
fi

echo "== pytest"
"$VENV/bin/python" -m pytest "$@"

if [ "$#" -eq 0 ]; then
  echo "== benchmark smoke run (bash bench/run.sh --smoke)"
  bash bench/run.sh --smoke
  echo "== publisher path cost in process (bench/publisher_cost.py)"
  "$VENV/bin/python" bench/publisher_cost.py
fi
