# Shared by scripts/*.sh: the project's virtualenv and system packages.
VENV="${TWISTEDPUSH_VENV:-$PWD/.venv}"
PYTHON="${PYTHON:-python3}"

ensure_venv() {
  if [ ! -x "$VENV/bin/python" ]; then
    echo "== creating $VENV"
    "$PYTHON" -m venv "$VENV"
  fi
}

# apt_install PACKAGE COMMAND: install a Debian package when COMMAND is missing.
apt_install() {
  if ! command -v "$2" >/dev/null 2>&1; then
    echo "== installing $1 (apt-get)"
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$1" >/dev/null
  fi
}

# npm_ci: the npm packages pages use (AutobahnJS for the /wamp/ demo), into ./node_modules
# from package-lock.json. Node and npm come with the machine; there is no fallback.
npm_ci() {
  command -v npm >/dev/null || { echo "npm is not installed (Node 20 with npm is needed)" >&2; exit 1; }
  echo "== npm ci (package-lock.json)"
  npm ci --no-audit --no-fund --loglevel=error
}
