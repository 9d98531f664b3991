#!/usr/bin/env bash
# A replica that forked off the cluster's history, for the test of
# read-your-writes across timelines (crates/litebridge/tests/pg_replicas.rs,
# found by a hostile review):
#
#   scripts/pg-fork.sh start   # primary P (:25440) with two asynchronous standbys A (:25441) and B (:25442)
#   scripts/pg-fork.sh fork    # the failover below; B ends up streaming from A, ahead of it on an abandoned history
#   scripts/pg-fork.sh stop    # stops the three and removes their files
#
# `fork`: A stops streaming; P writes a batch only B receives; P crashes;
# A is promoted (timeline 2) without it; B is pointed at A and crash
# restarted. B then replays its own log of the abandoned batch past A's
# switch point and, once its WAL receiver streams from A, reports timeline
# 2 with a replay position past A's new writes that it does not hold.
#
# Loopback only, trust authentication, fsync off (a throwaway cluster).
# Ports: LB_PG_FORK_PORT (P, default 25440), +1 (A), +2 (B). Files:
# LB_PG_FORK_DIR (default /tmp/litebridge-pgfork-$UID). The same start prints
# the settings (LB_TEST_PG_FORK_P, _A, _B: host:port).
set -euo pipefail

cmd=${1:-start}
port=${LB_PG_FORK_PORT:-25440}
dir=${LB_PG_FORK_DIR:-/tmp/litebridge-pgfork-$(id -u)}
# shellcheck source=scripts/pg-common.sh
. "$(dirname "$0")/pg-common.sh"

as_pg() {
  if [ "$(id -u)" -eq 0 ]; then (cd / && runuser -u postgres -- "$@"); else "$@"; fi
}
psql_at() {
  local p=$1
  shift
  as_pg "$(bin_dir)/psql" -X -q -t -A -h 127.0.0.1 -p "$p" -U postgres -d postgres "$@"
}
opts() {
  echo "-c listen_addresses=127.0.0.1 -c unix_socket_directories=$dir -c fsync=off \
-c shared_buffers=32MB -c max_connections=50 -c wal_level=replica -c max_wal_senders=10 \
-c wal_receiver_status_interval=1s -c wal_retrieve_retry_interval=200ms -p $1"
}
pg_start() {
  as_pg "$(bin_dir)/pg_ctl" -D "$dir/$1" -l "$dir/$1.log" -o "$(opts "$2")" -w -t 30 start >/dev/null \
    || { tail -20 "$dir/$1.log" >&2; return 1; }
}
pg_crash() {
  as_pg "$(bin_dir)/pg_ctl" -D "$dir/$1" -m immediate -w -t 30 stop >/dev/null
}
print_env() {
  echo "export LB_TEST_PG_FORK_P='127.0.0.1:$port'"
  echo "export LB_TEST_PG_FORK_A='127.0.0.1:$((port + 1))'"
  echo "export LB_TEST_PG_FORK_B='127.0.0.1:$((port + 2))'"
}

start() {
  bin_dir >/dev/null || install_packages postgresql
  stop
  mkdir -p "$dir"
  [ "$(id -u)" -eq 0 ] && chown postgres "$dir"
  as_pg "$(bin_dir)/initdb" -D "$dir/p" -A trust -U postgres --no-sync -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log"
  pg_start p "$port"
  local name p
  for name in a b; do
    p=$((port + 1))
    [ "$name" = b ] && p=$((port + 2))
    as_pg "$(bin_dir)/pg_basebackup" -h 127.0.0.1 -p "$port" -U postgres -D "$dir/$name" -R -X stream --no-sync
    pg_start "$name" "$p"
  done
  wait_for "both standbys streaming" \
    "[ \"\$(psql_at $port -c \"SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'\")\" = 2 ]"
  print_env
}

fork() {
  local a=$((port + 1)) b=$((port + 2))
  # A stops streaming; a batch then reaches B only.
  psql_at "$a" -c "ALTER SYSTEM SET primary_conninfo = ''" -c "SELECT pg_reload_conf()" >/dev/null
  wait_for "A to stop streaming" \
    "[ \"\$(psql_at $port -c \"SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'\")\" = 1 ]"
  psql_at "$port" -c "CREATE TABLE public.abandoned(v int)" \
    -c "INSERT INTO public.abandoned SELECT pg_catalog.generate_series(1, 100000)" >/dev/null
  local head
  head=$(psql_at "$port" -c "SELECT pg_current_wal_lsn()")
  wait_for "B to replay the batch" \
    "[ \"\$(psql_at $b -c \"SELECT pg_last_wal_replay_lsn() >= '$head'\")\" = t ]"
  # P crashes; A, without the batch, is promoted.
  pg_crash p
  as_pg "$(bin_dir)/pg_ctl" -D "$dir/a" -w -t 30 promote >/dev/null
  wait_for "A to take writes" "[ \"\$(psql_at $a -c 'SELECT pg_is_in_recovery()')\" = f ]"
  # B follows A, and crashes: it starts again on A's timeline.
  psql_at "$b" -c "ALTER SYSTEM SET primary_conninfo = 'host=127.0.0.1 port=$a user=postgres application_name=b'" \
    -c "SELECT pg_reload_conf()" >/dev/null
  # B refuses the fork while it runs, but fetches A's timeline history.
  wait_for "B to fetch timeline 2's history" \
    "[ \"\$(psql_at $b -c \"SELECT count(*) FROM pg_ls_waldir() WHERE name = '00000002.history'\")\" = 1 ]"
  pg_crash b
  pg_start b "$b"
  wait_for "B to accept reads" "[ \"\$(psql_at $b -c 'SELECT pg_is_in_recovery()')\" = t ]"
}

stop() {
  local name
  if bin_dir >/dev/null; then
    for name in p a b; do
      if [ -f "$dir/$name/postmaster.pid" ]; then pg_crash "$name" || true; fi
    done
  fi
  rm -rf "$dir"
}

case "$cmd" in
  start) start ;;
  fork) fork ;;
  stop) stop ;;
  env) print_env ;;
  *) echo "usage: $0 start|fork|stop|env" >&2; exit 2 ;;
esac
