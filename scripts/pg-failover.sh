#!/usr/bin/env bash
# A local pg_auto_failover formation on loopback for litebridge's failover
# tests: a monitor and two PostgreSQL nodes (one primary, one secondary),
# with the monitor's health checks tightened so that a failover takes
# seconds rather than the default minute.
#
#   scripts/pg-failover.sh start   # installs Debian's postgresql-15-auto-failover when missing, starts, prints the settings
#   scripts/pg-failover.sh env     # prints the settings (eval "$(scripts/pg-failover.sh env)")
#   scripts/pg-failover.sh primary # the data directory of the node the monitor last saw as primary (may lag a switchover)
#   scripts/pg-failover.sh switchover  # a planned switchover (pg_autoctl perform switchover)
#   scripts/pg-failover.sh kill DATADIR  # kill -9 of a node's postgres and keeper
#   scripts/pg-failover.sh revive DATADIR  # starts a killed node's keeper again (it rejoins as a standby)
#   scripts/pg-failover.sh events  # the monitor's events (state changes, with positions), oldest first
#   scripts/pg-failover.sh stop    # stops it and removes its files
#
# Loopback only. Ports: LB_PGAF_PORT (monitor, default 26540: below the
# kernel's range for outgoing connections), +1 and +2 (the nodes). Files: LB_PGAF_DIR (default /tmp/litebridge-pgaf-$UID).
# Trust authentication and fsync off: a throwaway formation (the tests kill
# processes, not the machine).
set -euo pipefail

cmd=${1:-start}
port=${LB_PGAF_PORT:-26540}
dir=${LB_PGAF_DIR:-/tmp/litebridge-pgaf-$(id -u)}
monitor_uri="postgres://autoctl_node@127.0.0.1:$port/pg_auto_failover?sslmode=disable"

# shellcheck source=scripts/pg-common.sh
. "$(dirname "$0")/pg-common.sh"

install() {
  if command -v pg_autoctl >/dev/null && bin_dir >/dev/null; then return 0; fi
  install_packages postgresql-15-auto-failover
}

# PostgreSQL refuses to run as root: as root, its commands run as `postgres`.
as_pg() {
  local path
  path="$(bin_dir):$PATH"
  if [ "$(id -u)" -eq 0 ]; then
    (cd / && runuser -u postgres -- env PATH="$path" HOME="$dir" "$@")
  else
    env PATH="$path" HOME="$dir" "$@"
  fi
}

uri() {
  echo "postgres://postgres@127.0.0.1:$((port + 1)),127.0.0.1:$((port + 2))/postgres?target_session_attrs=read-write&connect_timeout=2"
}

print_env() {
  echo "export LB_TEST_PGAF='$(uri)'"
  echo "export LB_TEST_PGAF_DIR='$dir'"
}

running() { [ -f "$dir/monitor/postmaster.pid" ]; }

# Runs a pg_autoctl service in the background, its output in a log.
serve() {
  local name=$1
  as_pg nohup pg_autoctl run --pgdata "$dir/$name" >>"$dir/$name.log" 2>&1 &
}

psql_at() {
  local p=$1
  shift
  as_pg psql -X -q -t -A -h 127.0.0.1 -p "$p" -U postgres -d postgres "$@"
}

# wait_for comes from pg-common.sh; here 240 tries 0.5 s apart (a formation takes seconds).

start() {
  install
  if running; then print_env; return 0; fi
  rm -rf "$dir"
  mkdir -p "$dir"
  [ "$(id -u)" -eq 0 ] && chown postgres "$dir"
  as_pg pg_autoctl create monitor --pgdata "$dir/monitor" --pgport "$port" \
    --hostname 127.0.0.1 --auth trust --no-ssl >"$dir/create-monitor.log" 2>&1
  serve monitor
  wait_for "the monitor" "psql_at $port -d pg_auto_failover -c 'SELECT 1'" 240 0.5
  # Seconds, not a minute: checks every 500 ms, a node unhealthy after 2 s.
  local setting
  for setting in health_check_period=500 health_check_timeout=1000 health_check_max_retries=1 \
    health_check_retry_delay=200 node_considered_unhealthy_timeout=2000 \
    primary_demote_timeout=5000 startup_grace_period=2000; do
    psql_at "$port" -d pg_auto_failover \
      -c "ALTER SYSTEM SET pgautofailover.${setting%%=*} = ${setting#*=}" >/dev/null
  done
  psql_at "$port" -d pg_auto_failover -c "SELECT pg_reload_conf()" >/dev/null
  local n
  for n in 1 2; do
    as_pg pg_autoctl create postgres --pgdata "$dir/node$n" --pgport "$((port + n))" \
      --hostname 127.0.0.1 --auth trust --no-ssl --monitor "$monitor_uri" \
      --name "node$n" >"$dir/create-node$n.log" 2>&1
    as_pg sh -c "echo 'fsync = off' >> '$dir/node$n/postgresql.conf'"
    serve "node$n"
    if [ "$n" -eq 1 ]; then
      wait_for "node1 as primary" "[ \"\$(state node1)\" = single ]" 240 0.5
    fi
  done
  wait_for "a primary and a secondary" \
    "[ \"\$(state node1)\$(state node2)\" = primarysecondary ] || [ \"\$(state node1)\$(state node2)\" = secondaryprimary ]" \
    240 0.5
  print_env
}

# The state the monitor reports for node NAME.
state() {
  psql_at "$port" -d pg_auto_failover -c \
    "SELECT reportedstate FROM pgautofailover.node WHERE nodename = '$1'"
}

primary() {
  local n
  for n in 1 2; do
    if [ "$(state "node$n")" = primary ] || [ "$(state "node$n")" = single ] \
      || [ "$(state "node$n")" = wait_primary ]; then
      echo "$dir/node$n"
      return 0
    fi
  done
  return 1
}

# The pids of a node's pg_autoctl processes (the keeper and its children,
# which retitle themselves and carry the node's PGDATA) and its postmaster.
node_pids() {
  local data=$1 pid
  for pid in $(pgrep pg_autoctl || true); do
    if { tr '\0' '\n' <"/proc/$pid/cmdline"; } 2>/dev/null | grep -qx -- "$data" \
      || { tr '\0' '\n' <"/proc/$pid/environ"; } 2>/dev/null | grep -qx "PGDATA=$data"; then
      echo "$pid"
    fi
  done
  [ -f "$data/postmaster.pid" ] && head -1 "$data/postmaster.pid"
  return 0
}

# kill -9 of a node: its postgres and its keeper at once, as a crash would.
kill_node() {
  local pids
  pids=$(node_pids "$1")
  # shellcheck disable=SC2086
  [ -n "$pids" ] && kill -9 $pids 2>/dev/null
  return 0
}

# A killed node's keeper started again, as its service manager would: it
# finds the formation failed over, rewinds and follows the new primary.
revive_node() {
  local name
  name=$(basename "$1")
  case "$name" in node1 | node2) ;; *) echo "revive: not a node's data directory: $1" >&2; exit 2 ;; esac
  serve "$name"
}

# A planned switchover: the secondary becomes primary.
switchover() {
  as_pg pg_autoctl perform switchover --pgdata "$dir/monitor" >"$dir/switchover.log" 2>&1
}

stop() {
  if [ -d "$dir" ]; then
    local n
    for n in node1 node2 monitor; do
      [ -d "$dir/$n" ] && as_pg pg_autoctl stop --pgdata "$dir/$n" --immediate >/dev/null 2>&1 || true
    done
    for n in node1 node2 monitor; do
      [ -f "$dir/$n/postmaster.pid" ] && as_pg "$(bin_dir)/pg_ctl" -D "$dir/$n" -m immediate stop >/dev/null 2>&1 || true
    done
    # Whatever is left: pg_autoctl's processes retitle themselves, so they
    # are found by the HOME they were started with; postgres by its -D.
    local i pid
    for i in 1 2 3 4 5; do
      for pid in $(pgrep pg_autoctl || true); do
        if { tr '\0' '\n' <"/proc/$pid/environ"; } 2>/dev/null | grep -qx "HOME=$dir"; then
          kill -9 "$pid" 2>/dev/null || true
        fi
      done
      pkill -9 -f -- "$dir" 2>/dev/null || true
      sleep 0.3
      rm -rf "$dir" 2>/dev/null && break
    done
  fi
}

case "$cmd" in
  start) start ;;
  env) print_env ;;
  primary) primary ;;
  state) state "$2" ;;
  switchover) switchover ;;
  kill) kill_node "$2" ;;
  revive) revive_node "$2" ;;
  events) psql_at "$port" -d pg_auto_failover -c \
    "SELECT eventtime, nodename, reportedstate, goalstate, reportedlsn, description FROM pgautofailover.event ORDER BY eventid" ;;
  stop) stop ;;
  *) echo "usage: $0 start|env|primary|state NODE|switchover|kill DATADIR|revive DATADIR|events|stop" >&2; exit 2 ;;
esac
