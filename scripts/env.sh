# Shared by scripts/*.sh: the project's virtualenv and system packages.
VENV="${TWISTEDPUSH_VENV:-$PWD/.venv}"
PYTHON="${PYTHON:-python3}"

ensure_venv() {
  if [ ! -x "$VENV/bin/python" ]; then
    echo "== creating $VENV"
    "$PYTHON" -m venv "$VENV"
  fi
}

# apt_install PACKAGE COMMAND [PACKAGE COMMAND ...]: install the Debian packages whose
# COMMAND is missing, with one apt-get update for all of them.
apt_install() {
  local missing=()
  while [ "$#" -ge 2 ]; do
    command -v "$2" >/dev/null 2>&1 || missing+=("$1")
    shift 2
  done
  [ "${#missing[@]}" -eq 0 ] && return 0
  echo "== installing ${missing[*]} (apt-get)"
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

# npm_ci: the npm packages pages use (AutobahnJS for the /wamp/ demo), into ./node_modules
# from package-lock.json. Node and npm come with the machine; there is no fallback.
npm_ci() {
  command -v npm >/dev/null || { echo "npm is not installed (Node 20 with npm is needed)" >&2; exit 1; }
  echo "== npm ci (package-lock.json)"
  npm ci --no-audit --no-fund --loglevel=error
}
