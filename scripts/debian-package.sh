# Sourced by scripts/ensure-*.sh: `fetch_debian_package PACKAGE CACHE` downloads Debian bullseye's PACKAGE with a
# private apt configuration under CACHE/apt (the system apt state, lists and caches are never touched) and
# extracts it into CACHE with dpkg -x (no install, no root needed beyond network access). The caller defines
# `log` and `die`.

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

fetch_debian_package() {
    local PACKAGE="$1" CACHE="$2" MIRROR APT LIST KEYRING k lists debs
    local -a APT_OPTS
    command -v apt-get >/dev/null || die "no apt-get to download Debian's $PACKAGE package; install $PACKAGE and put it on PATH"
    command -v dpkg >/dev/null || die "dpkg not found; cannot extract the $PACKAGE package"
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

    log "apt-get download $PACKAGE"
    rm -f "$APT/download/${PACKAGE}"_*.deb
    if ! (cd "$APT/download" && apt-get "${APT_OPTS[@]}" download "$PACKAGE") >"$APT/download.log" 2>&1; then
        cat "$APT/download.log" >&2
        die "apt-get download $PACKAGE failed (see above; log in $APT/download.log)"
    fi
    shopt -s nullglob
    debs=("$APT/download/${PACKAGE}"_*.deb)
    shopt -u nullglob
    ((${#debs[@]})) || die "apt-get download reported success but no ${PACKAGE}_*.deb in $APT/download"
    log "downloaded $(basename "${debs[0]}")"
    log "extracting into $CACHE"
    dpkg -x "${debs[0]}" "$CACHE" || die "dpkg -x ${debs[0]} failed"
}
