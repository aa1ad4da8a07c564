#!/usr/bin/env bash
# Install (or check) Debian's chromium for the report's browser tests, the way slurm-up.sh installs
# the SLURM packages: idempotent (a present /usr/bin/chromium is only checked), apt-get update only
# when the package lists are missing or stale. Prints the browser's path; exits non-zero with a
# message when it cannot be installed. Must run as root when chromium is missing.
set -euo pipefail

BIN=${DCSSL_CHROMIUM:-/usr/bin/chromium}
LOG=/tmp/dcssl-chromium-apt.log
log() { echo "[chromium-up] $*" >&2; }
die() { echo "[chromium-up] ERROR: $*" >&2; exit 1; }

if [[ ! -x $BIN ]]; then
    [[ $(id -u) -eq 0 ]] || die "$BIN missing and not root: install it with apt-get install -y chromium"
    command -v apt-get >/dev/null || die "$BIN missing and no apt-get to install it"
    export DEBIAN_FRONTEND=noninteractive
    apt_install() { apt-get install -y -q --no-install-recommends chromium fonts-dejavu-core >>"$LOG" 2>&1; }
    log "installing chromium (log: $LOG)"
    if ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null || ! apt_install; then
        log "apt-get update (package lists missing or stale)"
        apt-get update -q >>"$LOG" 2>&1 || die "apt-get update failed, see $LOG"
        apt_install || die "apt-get install chromium failed, see $LOG"
    fi
    [[ -x $BIN ]] || die "still no $BIN after install, see $LOG"
fi
"$BIN" --version >/dev/null 2>&1 || die "$BIN does not start: $("$BIN" --version 2>&1 | tail -n 1)"
echo "$BIN"
