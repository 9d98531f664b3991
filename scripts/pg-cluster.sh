#!/usr/bin/env bash
# A local PostgreSQL cluster on loopback for trying litebridge's PostgreSQL
# backend and for its tests: a primary and two streaming replicas, one of
# them replaying 300 ms late (so that a stale read is certain when it is
# read without a position token).
#
#   scripts/pg-cluster.sh start   # installs Debian's postgresql-15 when missing, starts, prints the settings
#   scripts/pg-cluster.sh env     # prints the settings of a running cluster (eval "$(scripts/pg-cluster.sh env)")
#   scripts/pg-cluster.sh stop    # stops it and removes its files
#
# Everything listens on 127.0.0.1 only. Ports: LB_PG_PORT (primary,
# default 25432: below the kernel's range for outgoing connections), +1
# (replica), +2 (delayed replica). Files: LB_PG_DIR
# (default /tmp/litebridge-pg-$UID). (Not LITEBRIDGE_*: the binary reads those
# as its configuration.) It is a throwaway cluster: trust
# authentication on loopback and fsync off (the tests kill processes, not
# the machine, so the operating system keeps what was written).
set -euo pipefail

cmd=${1:-start}
port=${LB_PG_PORT:-25432}
dir=${LB_PG_DIR:-/tmp/litebridge-pg-$(id -u)}
nodes=("primary:$port" "replica:$((port + 1))" "delayed:$((port + 2))")

# shellcheck source=scripts/pg-common.sh
. "$(dirname "$0")/pg-common.sh"

install() {
  bin_dir >/dev/null || install_packages postgresql
}

# PostgreSQL refuses to run as root: as root, its commands run as `postgres`.
as_pg() {
  # From /: the caller's directory may be closed to the postgres user.
  if [ "$(id -u)" -eq 0 ]; then (cd / && runuser -u postgres -- "$@"); else "$@"; fi
}

print_env() {
  echo "export LB_TEST_PG='postgres://postgres@127.0.0.1:$port/postgres'"
  echo "export LB_TEST_PG_REPLICAS='127.0.0.1:$((port + 1)),127.0.0.1:$((port + 2))'"
  echo "export LB_TEST_PG_DELAYED='127.0.0.1:$((port + 2))'"
}

running() { [ -f "$dir/primary/postmaster.pid" ]; }

start() {
  install
  local bin
  bin=$(bin_dir)
  if running; then print_env; return 0; fi
  rm -rf "$dir"
  mkdir -p "$dir"
  [ "$(id -u)" -eq 0 ] && chown postgres "$dir"
  local opts="-c listen_addresses=127.0.0.1 -c unix_socket_directories=$dir -c fsync=off -c full_page_writes=off -c shared_buffers=64MB -c max_connections=200 -c wal_level=replica -c max_wal_senders=10 -c hot_standby_feedback=on -c wal_receiver_status_interval=1s"
  as_pg "$bin/initdb" -D "$dir/primary" -A trust -U postgres --no-sync -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log"
  as_pg "$bin/pg_ctl" -D "$dir/primary" -l "$dir/primary.log" -o "$opts -p $port" -w -t 30 start >/dev/null
  local name p
  for node in "${nodes[@]:1}"; do
    name=${node%%:*}
    p=${node##*:}
    as_pg "$bin/pg_basebackup" -h 127.0.0.1 -p "$port" -U postgres -D "$dir/$name" -R -X stream --no-sync
    echo "primary_conninfo = 'host=127.0.0.1 port=$port user=postgres application_name=$name'" | as_pg tee -a "$dir/$name/postgresql.auto.conf" >/dev/null
    # A read that holds up replay is cancelled after 300 ms (a recovery
    # conflict, which the tests provoke), not 30 s.
    echo "max_standby_streaming_delay = '300ms'" | as_pg tee -a "$dir/$name/postgresql.auto.conf" >/dev/null
    if [ "$name" = delayed ]; then
      echo "recovery_min_apply_delay = '300ms'" | as_pg tee -a "$dir/$name/postgresql.auto.conf" >/dev/null
    fi
    as_pg "$bin/pg_ctl" -D "$dir/$name" -l "$dir/$name.log" -o "$opts -p $p" -w -t 30 start >/dev/null
  done
  # Started is not streaming: a test run at once found no replica to
  # read from. Up to 30 s for both to stream from the primary.
  local streaming=0
  for _ in $(seq 300); do
    streaming=$(as_pg "$bin/psql" -h 127.0.0.1 -p "$port" -U postgres -d postgres -Atc \
      "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'")
    [ "$streaming" -ge 2 ] && break
    sleep 0.1
  done
  if [ "$streaming" -lt 2 ]; then
    echo "the replicas did not stream from the primary within 30 s (logs in $dir)" >&2
    exit 1
  fi
  echo "PostgreSQL on 127.0.0.1: primary :$port, replica :$((port + 1)), delayed replica :$((port + 2)) (files in $dir)" >&2
  print_env
}

stop() {
  local bin
  bin=$(bin_dir) || return 0
  for node in "${nodes[@]}"; do
    name=${node%%:*}
    if [ -f "$dir/$name/postmaster.pid" ]; then
      as_pg "$bin/pg_ctl" -D "$dir/$name" -m immediate -w -t 30 stop >/dev/null || true
    fi
  done
  rm -rf "$dir"
}

case "$cmd" in
  start) start ;;
  stop) stop ;;
  env) running && print_env || { echo "no cluster is running in $dir (scripts/pg-cluster.sh start)" >&2; exit 1; } ;;
  *) echo "usage: $0 start|env|stop" >&2; exit 2 ;;
esac
