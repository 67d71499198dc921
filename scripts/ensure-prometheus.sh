#!/usr/bin/env bash
# Install Prometheus and promtool for the demo and the tests, and record the directory holding both in
# .cache/prometheus/path (like scripts/ensure-consul.sh for Consul).
#
# Order: `prometheus` and `promtool` on PATH -> previously extracted .cache/prometheus/usr/bin/ ->
# download Debian's `prometheus` package (bookworm: 2.42, promtool included) with this machine's own apt
# sources (`apt-get download`: nothing installed, no root needed) and extract it with dpkg -x.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT="$(pwd)"
CACHE="$ROOT/.cache/prometheus"
STAMP="$CACHE/path"
LOCAL_DIR="$CACHE/usr/bin"

log() { echo "ensure-prometheus: $*" >&2; }
die() { echo "ensure-prometheus: ERROR: $*" >&2; exit 1; }

check_dir() {
    # Prints the version line if both binaries of directory $1 run.
    local dir="$1" out
    out="$("$dir/prometheus" --version 2>&1)" || { log "'$dir/prometheus --version' failed: $out"; return 1; }
    "$dir/promtool" --version >/dev/null 2>&1 || { log "'$dir/promtool --version' failed"; return 1; }
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

# 3. download Debian's package with the machine's own sources, extract it
command -v apt-get >/dev/null || die "no prometheus on PATH and no apt-get to download Debian's package; install Prometheus 2.x (with promtool) and put it on PATH"
command -v dpkg >/dev/null || die "dpkg not found; cannot extract the prometheus package"
DOWNLOAD="$CACHE/download"
mkdir -p "$DOWNLOAD"
rm -f "$DOWNLOAD"/prometheus_*.deb
log "apt-get download prometheus (this machine's apt sources)"
if ! (cd "$DOWNLOAD" && apt-get download prometheus) >"$DOWNLOAD/download.log" 2>&1; then
    cat "$DOWNLOAD/download.log" >&2
    die "apt-get download prometheus failed (see above; if apt knows no such package, run apt-get update first)"
fi
shopt -s nullglob
debs=("$DOWNLOAD"/prometheus_*.deb)
shopt -u nullglob
((${#debs[@]})) || die "apt-get download reported success but no prometheus_*.deb in $DOWNLOAD"
log "downloaded $(basename "${debs[0]}"); extracting into $CACHE"
dpkg -x "${debs[0]}" "$CACHE" || die "dpkg -x ${debs[0]} failed"
[[ -x "$LOCAL_DIR/prometheus" && -x "$LOCAL_DIR/promtool" ]] || die "package extracted but $LOCAL_DIR/prometheus or promtool is missing"
check_dir "$LOCAL_DIR" || die "$LOCAL_DIR was extracted but does not run"
write_stamp "$LOCAL_DIR"
