# Shared by the PostgreSQL scripts (sourced, not run).

# The directory of Debian's PostgreSQL binaries (initdb, pg_ctl, ...).
bin_dir() {
  local d
  for d in /usr/lib/postgresql/*/bin; do
    [ -x "$d/initdb" ] && { echo "$d"; return 0; }
  done
  return 1
}

# Debian's packages $* when PostgreSQL's binaries are missing.
install_packages() {
  if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi
  echo "installing Debian's $* (first run on this machine)..." >&2
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >&2
}

# Runs CHECK until it succeeds: TRIES times (default 200), PAUSE seconds
# apart (default 0.1); then says WHAT did not happen, and fails.
wait_for() {
  local what=$1 check=$2 tries=${3:-200} pause=${4:-0.1} i
  for i in $(seq 1 "$tries"); do
    if eval "$check" >/dev/null 2>&1; then return 0; fi
    sleep "$pause"
  done
  echo "$(basename "$0"): $what did not happen in $tries tries ${pause} s apart; logs in $dir" >&2
  return 1
}
