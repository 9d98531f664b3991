#!/usr/bin/env bash
# Every test: the README's test command. Starts the services the tests need
# on loopback (a PostgreSQL primary and two replicas, scripts/pg-cluster.sh;
# installed from Debian's packages on a fresh machine), runs the Rust,
# Python, JavaScript and browser suites, and stops the services whatever
# happened. The PostgreSQL tests are required here, not skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

eval "$(scripts/pg-cluster.sh start)"
trap 'scripts/pg-cluster.sh stop' EXIT
export LB_TEST_REQUIRE=pg

cargo test --workspace
python3 -m unittest discover -s python/tests -t python
(cd clients/js && npm ci --no-audit --no-fund && npm test)
python3 -m unittest discover -s clients/python/tests -t clients/python
(cd tests/browser && npm ci --no-audit --no-fund && npm test)
