#!/usr/bin/env bash
# Install Prometheus and promtool for the demo and the tests, and record the directory holding both in
# .cache/prometheus/path (like scripts/ensure-consul.sh for Consul).
#
# Order: `prometheus` and `promtool` on PATH (if that Prometheus has Consul service discovery) -> previously
# extracted .cache/prometheus/usr/bin/ -> download Debian bullseye's `prometheus` package (2.24.1, promtool
# included) and extract it (scripts/debian-package.sh, as for Consul). Not bookworm's 2.42: Debian builds it
# without Consul service discovery ("Disable Consul SD until its Debian package is back in shape", its
# changelog), and deploy/prometheus/prometheus.yml finds every process through Consul.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT="$(pwd)"
CACHE="$ROOT/.cache/prometheus"
STAMP="$CACHE/path"
LOCAL_DIR="$CACHE/usr/bin"

log() { echo "ensure-prometheus: $*" >&2; }
die() { echo "ensure-prometheus: ERROR: $*" >&2; exit 1; }

check_dir() {
    # Prints the version line if both binaries of directory $1 run and promtool accepts the repository's
    # configuration (consul_sd_configs: a Prometheus built without Consul service discovery refuses it).
    local dir="$1" out
    out="$("$dir/prometheus" --version 2>&1)" || { log "'$dir/prometheus --version' failed: $out"; return 1; }
    "$dir/promtool" check config "$ROOT/deploy/prometheus/prometheus.yml" >/dev/null 2>&1 || {
        log "'$dir/promtool check config deploy/prometheus/prometheus.yml' failed (no Consul service discovery?)"
        return 1
    }
    log "$(head -n1 <<<"$out") at $dir"
}

write_stamp() {
    mkdir -p "$CACHE"
    printf '%s\n' "$1" >"$STAMP.tmp"
    mv "$STAMP.tmp" "$STAMP"
    log "wrote $STAMP -> $1"
}

# 1. on PATH
if bin="$(command -v prometheus 2>/dev/null)" && command -v promtool >/dev/null 2>&1; then
    dir="$(dirname "$(readlink -f "$bin")")"
    if [[ -x "$dir/promtool" ]] && check_dir "$dir"; then
        write_stamp "$dir"
        exit 0
    fi
fi

# 2. previously extracted copy
if [[ -x "$LOCAL_DIR/prometheus" && -x "$LOCAL_DIR/promtool" ]]; then
    log "found previously extracted $LOCAL_DIR"
    if check_dir "$LOCAL_DIR"; then
        write_stamp "$LOCAL_DIR"
        exit 0
    fi
    log "extracted copy does not run; downloading again"
fi

# 3. download Debian bullseye's package (scripts/debian-package.sh)
# shellcheck source=scripts/debian-package.sh
source "$ROOT/scripts/debian-package.sh"
fetch_debian_package prometheus "$CACHE"
[[ -x "$LOCAL_DIR/prometheus" && -x "$LOCAL_DIR/promtool" ]] || die "package extracted but $LOCAL_DIR/prometheus or promtool is missing"
check_dir "$LOCAL_DIR" || die "$LOCAL_DIR was extracted but does not run"
write_stamp "$LOCAL_DIR"
