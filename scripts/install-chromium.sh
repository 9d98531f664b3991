#!/usr/bin/env bash
# Installs Debian's Chromium for the dashboard's browser test, when it is not
# there yet (a fresh machine). The browser comes from Debian's packages only:
# nothing is downloaded from elsewhere. Prints the browser's path.
set -euo pipefail
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi
  echo "installing Debian's chromium (first run on this machine)..." >&2
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends chromium >&2
fi
command -v chromium
