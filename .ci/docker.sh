#!/usr/bin/env bash
# Build and check the project's Docker image on a CI machine, starting (and later stopping) a
# Docker daemon of our own when none is running.
#
#   .ci/docker.sh up              start dockerd unless a daemon already answers
#   .ci/docker.sh base            stand-in python:3.12-slim-bookworm (no registry reachable here)
#   .ci/docker.sh build [IMAGE]   docker build of the repository's Dockerfile, unchanged
#   .ci/docker.sh check [IMAGE]   non-root user, `virnucpro --version`, `ps` present
#   .ci/docker.sh down            stop dockerd, only if `up` started it
#   .ci/docker.sh all [IMAGE]     up, base, build, check, down (down also on failure)
#   .ci/docker.sh image-name      print the default IMAGE
#
# IMAGE defaults to process.container of conf/base.config, else virnucpro:<package version>.
set -euo pipefail
# shellcheck source=.ci/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

STATE_DIR="${VIRNUCPRO_CI_STATE:-/tmp/virnucpro-ci}"
PID_FILE="$STATE_DIR/dockerd.pid"
CHILDREN_FILE="$STATE_DIR/dockerd.children"
DOCKERD_LOG="$STATE_DIR/dockerd.log"
CACHE_DIR="$CI_CACHE"
BASE_IMAGE="python:3.12-slim-bookworm"
# Bump when the stand-in's recipe changes, so that a cached rootfs of an older recipe is not reused
BASE_RECIPE="v2"
BASE_TARBALL="$CACHE_DIR/bookworm-python-rootfs-$BASE_RECIPE.tar.gz"
VENV="/usr/local/venv"
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
DAEMON_WAIT_S="${DAEMON_WAIT_S:-60}"


# Seconds since the epoch, for the timings this script reports
now() { date +%s; }

daemon_answers() { docker info >/dev/null 2>&1; }

# True when the daemon that answers is the dockerd `up` started (its pid file names a live dockerd)
daemon_is_ours() { [[ -f "$PID_FILE" ]] && pid_is "$(cat "$PID_FILE")" dockerd; }

# True when PID is alive and is a process named NAME (guards against a reused pid)
pid_is() {
    local pid="$1" name="$2"
    [[ -n "$pid" && -r "/proc/$pid/comm" ]] && [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$name" ]]
}

# Wait up to $2 seconds for process $1 to be gone; false if it is still there
wait_gone() {
    local pid="$1" limit="$2" i
    for ((i = 0; i < limit * 10; i++)); do
        [[ -d "/proc/$pid" ]] || return 0
        sleep 0.1
    done
    [[ ! -d "/proc/$pid" ]]
}

# Debian's docker.io, which brings dockerd, containerd and runc (a docker client alone is not enough)
ensure_dockerd_installed() {
    command -v dockerd >/dev/null 2>&1 && return 0
    log "dockerd missing: installing Debian's docker.io"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker.io >/dev/null
    command -v dockerd >/dev/null 2>&1 || die "docker.io installed but no dockerd on PATH"
}

cmd_up() {
    local t0 pid i
    t0=$(now)
    ensure_dockerd_installed
    command -v docker >/dev/null 2>&1 || die "no docker client on PATH (docker.io provides one)"
    if daemon_answers; then
        if [[ -f "$PID_FILE" ]] && pid_is "$(cat "$PID_FILE")" dockerd; then
            log "dockerd started earlier by this script is running (pid $(cat "$PID_FILE"))"
        else
            log "a Docker daemon is already running (not ours: it will be left alone by 'down')"
        fi
        return 0
    fi
    if [[ -f "$PID_FILE" ]]; then
        pid="$(cat "$PID_FILE")"
        if pid_is "$pid" dockerd; then
            die "dockerd (pid $pid, started by this script) runs but does not answer; see $DOCKERD_LOG or run '$0 down'"
        fi
        log "removing stale state file $PID_FILE (pid $pid is gone)"
        rm -f "$PID_FILE" "$CHILDREN_FILE"
    fi
    mkdir -p "$STATE_DIR"
    log "starting dockerd (log: $DOCKERD_LOG)"
    # A failed or stopped start stops the dockerd it started: setsid keeps the caller's Ctrl-C from
    # reaching dockerd, so nothing else would (a stop signal is an exit with 128 + the signal: the
    # EXIT trap would see status 0 otherwise)
    trap 'on_up_exit $?' EXIT
    trap 'exit 143' TERM
    trap 'exit 130' INT
    trap 'exit 129' HUP
    # setsid: its own session, so that the caller's Ctrl-C or job control does not reach it
    setsid dockerd >"$DOCKERD_LOG" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$PID_FILE"
    for ((i = 0; i < DAEMON_WAIT_S; i++)); do
        if daemon_answers; then
            # The containerd that dockerd spawned (none if a system containerd was used), to be
            # sure on 'down' that it went away with dockerd
            pgrep -P "$pid" >"$CHILDREN_FILE" || true
            log "dockerd answers (pid $pid) after $(($(now) - t0)) s"
            trap - EXIT TERM INT HUP
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            rm -f "$PID_FILE"
            tail -n 30 "$DOCKERD_LOG" >&2 || true
            die "dockerd exited during start-up (log above, full log: $DOCKERD_LOG)"
        fi
        sleep 1
    done
    tail -n 30 "$DOCKERD_LOG" >&2 || true
    die "dockerd (pid $pid) did not answer 'docker info' within ${DAEMON_WAIT_S} s (log above); stopping it"
}

# On a failed or stopped `up` (status $1), stop the dockerd it started.
on_up_exit() {
    [[ "$1" -eq 0 ]] && return 0
    trap '' TERM INT HUP  # a second stop must not cut the clean-up short
    log "'up' failed: stopping the dockerd it started"
    cmd_down
}

cmd_down() {
    local pid children=() child
    if [[ ! -f "$PID_FILE" ]]; then
        log "no dockerd started by this script (no $PID_FILE): nothing to stop"
        return 0
    fi
    pid="$(cat "$PID_FILE")"
    if ! pid_is "$pid" dockerd; then
        log "dockerd pid $pid from $PID_FILE is already gone"
        rm -f "$PID_FILE" "$CHILDREN_FILE"
        return 0
    fi
    # Children now and at start-up (containerd, which dockerd stops itself on SIGTERM)
    mapfile -t children < <({ pgrep -P "$pid" || true; cat "$CHILDREN_FILE" 2>/dev/null || true; } | sort -u)
    log "stopping dockerd (pid $pid)"
    kill -TERM "$pid"
    if ! wait_gone "$pid" 30; then
        log "dockerd still running after 30 s: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        wait_gone "$pid" 10 || die "dockerd (pid $pid) survives SIGKILL"
    fi
    for child in "${children[@]}"; do
        [[ -n "$child" ]] || continue
        # Only if still alive and still not re-used by something else than what dockerd spawned
        if pid_is "$child" containerd && ! wait_gone "$child" 15; then
            log "containerd (pid $child) outlived dockerd: stopping it"
            kill -TERM "$child" 2>/dev/null || true
            wait_gone "$child" 15 || kill -KILL "$child" 2>/dev/null || true
        fi
    done
    rm -f "$PID_FILE" "$CHILDREN_FILE"
    log "dockerd stopped"
}

# --- stand-in base image ---------------------------------------------------------------------
# STAND-IN ONLY: container registries are unreachable on this project's machines, so the
# Dockerfile's `FROM python:3.12-slim-bookworm` cannot be pulled. We build a look-alike from
# Debian's own packages (debootstrap, Debian's python3 in a venv first on PATH, so that `pip` and
# `python` behave as in the official image) and import it under that exact name. The Dockerfile is
# NOT changed: the image that users and the release workflow build comes from the real base.
# Differences: Python 3.11 (bookworm's) instead of 3.12; procps is preinstalled. Python's headers
# are there, as in the official image (python3-dev), for the C compiler check of `check`.

# The rootfs tarball, made once and cached, so that a second run on the same machine is fast
make_base_tarball() {
    local root="$STATE_DIR/rootfs" ca
    command -v debootstrap >/dev/null 2>&1 || {
        log "installing debootstrap"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
    }
    rm -rf "$root"
    mkdir -p "$root" "$CACHE_DIR"
    log "debootstrap bookworm into $root (a few minutes)"
    debootstrap --variant=minbase --include=python3,python3-venv,python3-dev,procps,ca-certificates \
        bookworm "$root" "$DEBIAN_MIRROR" >"$STATE_DIR/debootstrap.log" 2>&1 \
        || { tail -n 30 "$STATE_DIR/debootstrap.log" >&2; die "debootstrap failed (log: $STATE_DIR/debootstrap.log)"; }
    # The host's CA bundle, so that pip and apt over https trust what the host trusts
    ca=/etc/ssl/certs/ca-certificates.crt
    [[ -f "$ca" ]] && cp "$ca" "$root/etc/ssl/certs/ca-certificates.crt"
    write_apt_sources "$root"
    cp /etc/resolv.conf "$root/etc/resolv.conf"
    log "creating the venv $VENV inside it and upgrading its pip"
    in_root "$root" /usr/bin/python3 -m venv "$VENV"
    in_root "$root" "$VENV/bin/python" -m pip install --quiet --no-cache-dir --upgrade pip \
        || die "pip upgrade inside the stand-in failed (is PyPI reachable?)"
    # As in the official slim images: no apt lists, no caches
    in_root "$root" apt-get clean
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root/etc/resolv.conf" "$root"/tmp/* "$root"/root/.cache
    : >"$root/etc/resolv.conf"
    log "packing $BASE_TARBALL"
    tar --numeric-owner -C "$root" -czf "$BASE_TARBALL.part" .
    mv "$BASE_TARBALL.part" "$BASE_TARBALL"
    rm -rf "$root"
}

# Run a command inside the rootfs with a clean environment (the host's PIP_* settings, such as
# find-links to host folders, must not leak in); proxy settings, if any, are kept
in_root() {
    local root="$1"
    shift
    local keep=() var
    for var in http_proxy https_proxy no_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY; do
        [[ -n "${!var:-}" ]] && keep+=("$var=${!var}")
    done
    env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
        "${keep[@]}" chroot "$root" "$@"
}

# bookworm, bookworm-updates and bookworm-security, as in the official image, so that the
# Dockerfile's `apt-get update && apt-get install procps=<version>` works inside it
write_apt_sources() {
    local root="$1"
    rm -f "$root/etc/apt/sources.list"
    cat >"$root/etc/apt/sources.list.d/debian.sources" <<'EOF'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
}

cmd_base() {
    local t0
    t0=$(now)
    daemon_answers || die "no Docker daemon answers: run '$0 up' first"
    if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
        if [[ "$(docker image inspect -f '{{.Comment}}' "$BASE_IMAGE")" != "stand-in for "* ]]; then
            log "$BASE_IMAGE already present (the real one): nothing to do"
            return 0
        fi
        if [[ "$(docker image inspect -f '{{index .Config.Labels "virnucpro.stand-in-recipe"}}' "$BASE_IMAGE")" == "$BASE_RECIPE" ]]; then
            log "$BASE_IMAGE stand-in (recipe $BASE_RECIPE) already present: nothing to do"
            return 0
        fi
        log "replacing the stand-in $BASE_IMAGE of an older recipe"
        docker rmi -f "$BASE_IMAGE" >/dev/null
    fi
    if ! daemon_is_ours; then
        # a daemon of the user's: the real base when a registry answers, rather than a stand-in that
        # their later builds of `FROM $BASE_IMAGE` would use
        if docker pull -q "$BASE_IMAGE" >/dev/null 2>&1; then
            log "$BASE_IMAGE pulled (the real one) into a Docker daemon this script did not start"
            return 0
        fi
        log "WARNING: importing the stand-in $BASE_IMAGE into a Docker daemon this script did not start" \
            "(no registry answers); remove it when done: docker rmi $BASE_IMAGE"
    fi
    if [[ -f "$BASE_TARBALL" ]]; then
        log "using the cached rootfs $BASE_TARBALL"
    else
        make_base_tarball
    fi
    docker import \
        --change "ENV PATH=$VENV/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
        --change "ENV VIRTUAL_ENV=$VENV" \
        --change "ENV LANG=C.UTF-8" \
        --change 'CMD ["python3"]' \
        --change "LABEL virnucpro.stand-in-recipe=$BASE_RECIPE" \
        --message "stand-in for $BASE_IMAGE (Debian bookworm minbase + python3 venv); registries unreachable" \
        "$BASE_TARBALL" "$BASE_IMAGE" >/dev/null
    log "imported stand-in $BASE_IMAGE in $(($(now) - t0)) s"
}

# --- the project's image ----------------------------------------------------------------------

# process.container from conf/base.config, else virnucpro:<version of the package>
default_image() {
    local image version
    image="$(sed -n "s/^[[:space:]]*container[[:space:]]*=[[:space:]]*['\"]\\([^'\"]*\\)['\"].*/\\1/p" \
        "$REPO/conf/base.config" 2>/dev/null | head -n 1)"
    if [[ -n "$image" ]]; then
        echo "$image"
        return
    fi
    version="$(sed -n 's/^__version__[[:space:]]*=[[:space:]]*["'\'']\([^"'\'']*\)["'\''].*/\1/p' \
        "$REPO/virnucpro/__init__.py")"
    [[ -n "$version" ]] || die "no process.container in conf/base.config and no __version__ in virnucpro/__init__.py"
    echo "virnucpro:$version"
}

human_size() { numfmt --to=iec --suffix=B "$1" 2>/dev/null || echo "$1 bytes"; }

cmd_build() {
    local image="${1:-$(default_image)}" t0 size
    daemon_answers || die "no Docker daemon answers: run '$0 up' first"
    docker image inspect "$BASE_IMAGE" >/dev/null 2>&1 \
        || die "base image $BASE_IMAGE missing: run '$0 base' first (no registry to pull it from)"
    t0=$(now)
    log "docker build -t $image (Dockerfile unchanged; host network for apt and PyPI)"
    docker build --network host -t "$image" "$REPO"
    size="$(docker image inspect --format '{{.Size}}' "$image")"
    log "built $image in $(($(now) - t0)) s; image size $(human_size "$size") ($size bytes)"
}

cmd_check() {
    local image="${1:-$(default_image)}" uid version
    daemon_answers || die "no Docker daemon answers: run '$0 up' first"
    docker image inspect "$image" >/dev/null 2>&1 || die "image $image not found: run '$0 build' first"
    uid="$(docker run --rm "$image" id -u)" || die "'id -u' failed in $image"
    [[ "$uid" =~ ^[0-9]+$ ]] || die "unexpected 'id -u' output from $image: '$uid'"
    [[ "$uid" != 0 ]] || die "$image runs as root (uid 0); the Dockerfile must end with a non-root USER"
    version="$(docker run --rm "$image" virnucpro --version)" || die "'virnucpro --version' failed in $image"
    docker run --rm "$image" sh -c 'command -v ps >/dev/null && ps -o pid,comm >/dev/null' \
        || die "no working 'ps' in $image (Nextflow's task wrapper needs it: install procps)"
    # What Triton does at its first GPU kernel: build a Python extension with the C compiler
    docker run --rm "$image" sh -c 'cd "$(mktemp -d)" && printf "#include <Python.h>\n#include <stdint.h>\nint64_t f(void) { return Py_IsInitialized(); }\n" > t.c && cc -shared -fPIC -I"$(python -c "import sysconfig; print(sysconfig.get_paths()[\"include\"])")" t.c -o t.so' \
        || die "no working C compiler in $image (Triton builds its GPU kernel launchers with one: install gcc and libc6-dev)"
    log "check passed for $image: uid $uid, '$version', ps and a C compiler present"
}

cmd_all() {
    up_and_down_trap() { cmd_down; }
    cmd_up
    trap up_and_down_trap EXIT
    cmd_base
    cmd_build "$@"
    cmd_check "$@"
}

usage() {
    sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

main() {
    local sub="${1:-}"
    [[ $# -gt 0 ]] && shift
    case "$sub" in
        up) cmd_up ;;
        down) cmd_down ;;
        base) cmd_base ;;
        build) cmd_build "$@" ;;
        check) cmd_check "$@" ;;
        all) cmd_all "$@" ;;
        image-name) default_image ;;
        *) usage ;;
    esac
}

main "$@"
