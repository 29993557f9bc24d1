#!/usr/bin/env bash
# Install what scripts/server.sh and the tests need from Debian: the PostgreSQL server (package
# 'postgresql'), curl and iproute2 (ss) which it uses to check the server, and chromium for the
# test that renders the MLflow UI headless. Skips what is already installed.
# Needs root (or sudo). Python packages come from the project itself: mlflow, and psycopg2-binary
# from its `server` extra, which scripts/test.sh installs.
set -euo pipefail

packages=(postgresql curl iproute2 chromium)
missing=()
for pkg in "${packages[@]}"; do
  status="$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)"
  [[ "$status" == "install ok installed" ]] || missing+=("$pkg")
done

if ((${#missing[@]} == 0)); then
  echo "install_server_deps.sh: already installed: ${packages[*]}"
  exit 0
fi

command -v apt-get >/dev/null 2>&1 || {
  echo "install_server_deps.sh: error: apt-get not found; install ${missing[*]} with your package manager" >&2
  exit 1
}
SUDO=()
if ((EUID != 0)); then
  command -v sudo >/dev/null 2>&1 || {
    echo "install_server_deps.sh: error: need root or sudo to install ${missing[*]}" >&2
    exit 1
  }
  SUDO=(sudo)
fi

echo "install_server_deps.sh: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -q
# Debian's postgresql package creates and starts a default cluster on port 5432; scripts/server.sh
# uses its own cluster (default port 5433) and does not need it.
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
