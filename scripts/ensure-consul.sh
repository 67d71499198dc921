#!/usr/bin/env bash
# Install a Consul binary for tests and the dev cluster, and record its absolute path in
# .cache/consul/path (relative to the repo root).
#
# Order: `consul` on PATH -> previously extracted .cache/consul/usr/bin/consul -> download
# Debian bullseye's `consul` package (1.8.7) with a private apt setup (the system apt state,
# lists and caches are never touched) and extract it with dpkg -x (no install, no root needed
# beyond network access).
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
command -v apt-get >/dev/null || die "no consul on PATH and no apt-get to download Debian's package; install Consul 1.8+ and put it on PATH"
command -v dpkg >/dev/null || die "dpkg not found; cannot extract the consul package"

find_mirror() {
    # The main (non-security) Debian mirror this machine already uses; fallback: the first one found.
    local uris=() line u
    shopt -s nullglob
    for f in /etc/apt/sources.list.d/*.sources; do
        while IFS= read -r line; do
            for u in $line; do uris+=("$u"); done
        done < <(sed -n 's/^[[:space:]]*URIs:[[:space:]]*//p' "$f")
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -f "$f" ]] || continue
        while IFS= read -r u; do uris+=("$u"); done < <(
            awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i !~ /^\[/ && $i !~ /\]$/ && $i ~ /:\/\//) { print $i; break } }' "$f")
    done
    shopt -u nullglob
    ((${#uris[@]})) || return 1
    for u in "${uris[@]}"; do
        if [[ "$u" == *debian* && "$u" != *security* && "$u" != *ports* ]]; then
            echo "${u%/}"; return 0
        fi
    done
    echo "${uris[0]%/}"
}

MIRROR="$(find_mirror)" || die "could not find a Debian mirror in /etc/apt/sources.list or /etc/apt/sources.list.d/"
log "using Debian mirror $MIRROR (bullseye main)"

APT="$CACHE/apt"
mkdir -p "$APT/lists/partial" "$APT/cache/archives/partial" "$APT/download"
LIST="$APT/sources.list"

KEYRING=""
for k in /usr/share/keyrings/debian-archive-keyring.gpg /usr/share/keyrings/debian-archive-bullseye-automatic.gpg; do
    if [[ -f "$k" ]]; then KEYRING="$k"; break; fi
done
if [[ -n "$KEYRING" ]]; then
    echo "deb [signed-by=$KEYRING] $MIRROR bullseye main" >"$LIST"
else
    log "warning: no Debian archive keyring in /usr/share/keyrings; relying on apt's trusted keys"
    echo "deb $MIRROR bullseye main" >"$LIST"
fi

# Everything apt writes is redirected under $APT: lists, caches, package cache files.
APT_OPTS=(
    -o "Dir::State::Lists=$APT/lists"
    -o "Dir::State::status=/var/lib/dpkg/status"
    -o "Dir::Etc::SourceList=$LIST"
    -o "Dir::Etc::SourceParts=/dev/null"
    -o "Dir::Cache=$APT/cache"
    -o "Dir::Cache::archives=$APT/cache/archives"
    -o "Dir::Cache::pkgcache=$APT/cache/pkgcache.bin"
    -o "Dir::Cache::srcpkgcache=$APT/cache/srcpkgcache.bin"
    -o "Acquire::Check-Valid-Until=false"
    -o "Acquire::Languages=none"
    -o "APT::Get::List-Cleanup=false"
    -o "APT::Sandbox::User=root"
)

log "apt-get update (private lists in $APT/lists)"
if ! apt-get "${APT_OPTS[@]}" update >"$APT/update.log" 2>&1; then
    cat "$APT/update.log" >&2
    die "apt-get update for bullseye failed (see above; log in $APT/update.log)"
fi

if grep -E '^(W|E|Err):' "$APT/update.log" >&2; then
    log "apt-get update printed the warnings/errors above"
fi
shopt -s nullglob
lists=("$APT/lists"/*bullseye*_Packages*)
shopt -u nullglob
((${#lists[@]})) || die "apt-get update did not fetch a usable bullseye package list (signature or network problem?); see $APT/update.log"

log "apt-get download consul"
rm -f "$APT/download"/consul_*.deb
if ! (cd "$APT/download" && apt-get "${APT_OPTS[@]}" download consul) >"$APT/download.log" 2>&1; then
    cat "$APT/download.log" >&2
    die "apt-get download consul failed (see above; log in $APT/download.log)"
fi
shopt -s nullglob
debs=("$APT/download"/consul_*.deb)
shopt -u nullglob
((${#debs[@]})) || die "apt-get download reported success but no consul_*.deb in $APT/download"
log "downloaded $(basename "${debs[0]}")"

log "extracting into $CACHE"
dpkg -x "${debs[0]}" "$CACHE" || die "dpkg -x ${debs[0]} failed"
[[ -x "$LOCAL_BIN" ]] || die "package extracted but $LOCAL_BIN is missing"
check_binary "$LOCAL_BIN" || die "$LOCAL_BIN was extracted but does not run"
write_stamp "$LOCAL_BIN"
