#!/usr/bin/env bash
# A local NATS server on loopback for trying worker hosts, and the binary the
# tests start their own servers from (each test starts, restarts and stops
# its own, on a free port).
#
#   scripts/nats.sh start   # installs Debian's nats-server when missing, starts it, prints the settings
#   scripts/nats.sh env     # prints the settings (eval "$(scripts/nats.sh env)")
#   scripts/nats.sh stop    # stops it and removes its files
#
# It listens on 127.0.0.1 only. Port: LB_NATS_PORT (default 24222: below
# the kernel's range for outgoing connections, 32768-60999, one of which
# could hold a port in it for as long as it lives). Files:
# LB_NATS_DIR (default /tmp/litebridge-nats-$UID). (Not LITEBRIDGE_*: the
# binary reads those as its configuration.)
set -euo pipefail

cmd=${1:-start}
port=${LB_NATS_PORT:-24222}
dir=$(realpath -m "${LB_NATS_DIR:-/tmp/litebridge-nats-$(id -u)}")

server_bin() { command -v nats-server || { [ -x /usr/sbin/nats-server ] && echo /usr/sbin/nats-server; }; }

install() {
  server_bin >/dev/null && return 0
  if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi
  echo "installing Debian's nats-server (first run on this machine)..." >&2
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends nats-server >&2
}

print_env() {
  echo "export LB_TEST_NATS_SERVER='$(server_bin)'"
  echo "export LB_TEST_NATS='nats://127.0.0.1:$port'"
}

# Its server alive: the pid file's process, started by this script with
# that pid file (a pid left in a stale file may have been given to another
# program since).
running() {
  [ -f "$dir/nats.pid" ] || return 1
  local pid
  pid=$(cat "$dir/nats.pid")
  kill -0 "$pid" 2>/dev/null &&
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "-P $dir/nats.pid "
}

# Ends process $1: TERM, then KILL after 5 s.
end() {
  kill "$1" 2>/dev/null || return 0
  for _ in $(seq 1 100); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.05; done
  kill -9 "$1" 2>/dev/null || true
}

# One start or stop at a time for this directory (two starts at once would
# each start a server, and lose one).
exec 9>"$dir.lock"
flock 9

case "$cmd" in
  start)
    install
    # Up to five tries: another program may hold the port for a moment (a
    # CI run once found the old default, 54222, taken).
    for try in 1 2 3 4 5; do
      running && break
      rm -rf "$dir"
      mkdir -p "$dir"
      setsid "$(server_bin)" -a 127.0.0.1 -p "$port" -P "$dir/nats.pid" -l "$dir/nats.log" </dev/null >/dev/null 2>&1 9>&- &
      server=$!
      # Ready when it says so (another program listening on the port would
      # answer a connection too).
      for _ in $(seq 1 100); do
        kill -0 "$server" 2>/dev/null || break
        if grep -q "Server is ready" "$dir/nats.log" 2>/dev/null; then break 2; fi
        sleep 0.05
      done
      echo "nats.sh: nats-server did not start on 127.0.0.1:$port (try $try of 5):" >&2
      tail -n 5 "$dir/nats.log" >&2 2>/dev/null || true
      end "$server"
      sleep 1
    done
    running || {
      echo "nats.sh: nats-server did not start on 127.0.0.1:$port; log in $dir/nats.log" >&2
      exit 1
    }
    print_env
    ;;
  env) print_env ;;
  stop)
    if running; then
      end "$(cat "$dir/nats.pid")"
    fi
    rm -rf "$dir"
    ;;
  *) echo "usage: $0 start|env|stop" >&2; exit 2 ;;
esac
