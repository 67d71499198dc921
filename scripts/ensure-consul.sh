#!/usr/bin/env bash
# Install a Consul binary for tests and the dev cluster, and record its absolute path in
# .cache/consul/path (relative to the repo root).
#
# Order: `consul` on PATH -> previously extracted .cache/consul/usr/bin/consul -> download
# Debian bullseye's `consul` package (1.8.7) and extract it (scripts/debian-package.sh).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT="$(pwd)"
CACHE="$ROOT/.cache/consul"
STAMP="$CACHE/path"
LOCAL_BIN="$CACHE/usr/bin/consul"

log() { echo "ensure-consul: $*" >&2; }
die() { echo "ensure-consul: ERROR: $*" >&2; exit 1; }

check_binary() {
    # Prints the version line if the binary runs.
    local bin="$1" out
    out="$("$bin" version 2>&1)" || { log "'$bin version' failed: $out"; return 1; }
    log "$(head -n1 <<<"$out") at $bin"
}

write_stamp() {
    mkdir -p "$CACHE"
    printf '%s\n' "$1" >"$STAMP.tmp"
    mv "$STAMP.tmp" "$STAMP"
    log "wrote $STAMP -> $1"
}

# 1. consul on PATH
if bin="$(command -v consul 2>/dev/null)"; then
    bin="$(readlink -f "$bin")"
    log "found consul on PATH"
    if check_binary "$bin"; then
        write_stamp "$bin"
        exit 0
    fi
    log "consul on PATH does not run; trying the local copy"
fi

# 2. previously extracted copy
if [[ -x "$LOCAL_BIN" ]]; then
    log "found previously extracted $LOCAL_BIN"
    if check_binary "$LOCAL_BIN"; then
        write_stamp "$LOCAL_BIN"
        exit 0
    fi
    log "extracted copy does not run; downloading again"
fi

# 3. download Debian bullseye's package with a private apt configuration
# shellcheck source=scripts/debian-package.sh
source "$ROOT/scripts/debian-package.sh"
fetch_debian_package consul "$CACHE"
[[ -x "$LOCAL_BIN" ]] || die "package extracted but $LOCAL_BIN is missing"
check_binary "$LOCAL_BIN" || die "$LOCAL_BIN was extracted but does not run"
write_stamp "$LOCAL_BIN"
