# shellcheck shell=bash disable=SC2034
# Host-side helpers shared by scripts/testbed-setup and scripts/testbed-run.
# Sourced (bash); the caller sets TB_PROG to its own name first.

TB_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
TB_FILES=$TB_REPO/scripts/testbed
# Everything built or cached lives here (git-ignored). TESTBED_DIR moves it, e.g. to
# a folder that outlives fresh clones of the repo.
TB_DIR=${TESTBED_DIR:-$TB_REPO/build/testbed}

say() { printf '%s: %s\n' "$TB_PROG" "$*"; }
die() { printf '%s: ERROR: %s\n' "$TB_PROG" "$*" >&2; exit 1; }

# Microseconds since the epoch, without forking (bash 5).
now_us() { local t=${EPOCHREALTIME/[.,]/}; echo "${t#0}"; }

# Seconds (2 decimals) elapsed since a now_us value.
since() { local d=$(( ($(now_us) - $1) / 10000 )); printf '%d.%02d' $((d / 100)) $((d % 100)); }

# Short hash of the arguments: cache keys.
key_of() { printf '%s\n' "$@" | sha256sum | cut -c1-16; }

# Take an exclusive lock on the cache so concurrent runs by several engineers
# do not build over each other. Uses fd 9 for the life of the process.
lock_cache() {
    mkdir -p "$TB_DIR"
    exec 9>"$TB_DIR/.lock"
    if ! flock -n 9; then
        say "waiting for another testbed-setup to release $TB_DIR/.lock"
        flock 9
    fi
}
