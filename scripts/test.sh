#!/usr/bin/env bash
# Every test: the README's test command. Starts the services the tests need
# on loopback (a PostgreSQL primary and two replicas, scripts/pg-cluster.sh;
# a pg_auto_failover formation for the failover stage, scripts/pg-failover.sh;
# NATS, scripts/nats.sh, whose binary the NATS tests start their own servers
# from; all installed from Debian's packages on a fresh machine), runs the Rust,
# Python, JavaScript and browser suites and the failover stage, and stops
# the services whatever happened. The PostgreSQL and NATS tests are required
# here, not skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

stop_all() {
  scripts/pg-failover.sh stop || true
  scripts/nats.sh stop || true
  scripts/pg-cluster.sh stop
}
trap stop_all EXIT
# Each service's settings first, so that one that did not start ends the
# run here (an `eval` of nothing would not).
pg_env=$(scripts/pg-cluster.sh start)
nats_env=$(scripts/nats.sh start)
eval "$pg_env"
eval "$nats_env"
export LB_TEST_REQUIRE=pg,nats

cargo test --workspace
python3 -m unittest discover -s python/tests -t python
(cd clients/js && npm ci --no-audit --no-fund && npm test)
python3 -m unittest discover -s clients/python/tests -t clients/python
(cd tests/browser && npm ci --no-audit --no-fund && npm test)

# The failover stage: two front ends under a write load through a planned
# switchover and a kill -9 of the primary (crates/litebridge-cli/tests/failover.rs).
# A formation that does not start (exit 3 once, on a clean clone, its logs
# removed with it) has its logs printed, and is started once more.
if ! failover_env=$(scripts/pg-failover.sh start); then
  echo "== the failover formation did not start; its logs:" >&2
  tail -n 40 "${LB_PGAF_DIR:-/tmp/litebridge-pgaf-$(id -u)}"/*.log >&2 || true
  scripts/pg-failover.sh stop
  failover_env=$(scripts/pg-failover.sh start)
fi
eval "$failover_env"
# A failure prints what the monitor decided, for the formation goes with the run.
if ! cargo test -p litebridge-cli --test failover -- --ignored --nocapture; then
  echo "== the failover stage failed; the monitor's events:" >&2
  scripts/pg-failover.sh events >&2 || true
  exit 1
fi
