#!/usr/bin/env bash
# Install the system packages llmsys's tests and demo use, only when they are missing.
# Needs root (or passwordless sudo) for apt; without it, says what to install and goes on.
set -euo pipefail

need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)

if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
  SUDO=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  SUDO="sudo -n"
else
  echo "llmsys setup: please install: ${need[*]} (apt-get install ${need[*]})" >&2
  exit 0
fi

export DEBIAN_FRONTEND=noninteractive
if ! $SUDO apt-get install -y -q "${need[@]}"; then
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q "${need[@]}"
fi
