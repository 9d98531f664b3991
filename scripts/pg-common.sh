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
