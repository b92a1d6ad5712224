#!/usr/bin/env bash
# A throwaway one-node SLURM cluster for CI: munge + slurmctld + slurmd on this machine, with two
# simulated GPUs (gres), so the pipeline's `slurm` profile can be tested against a real scheduler.
#
#   sudo .ci/slurm.sh up      # install if needed, configure, start, wait until the node is idle
#   .ci/slurm.sh status       # which daemons run and who started them; sinfo; squeue
#   sudo .ci/slurm.sh down    # cancel jobs, stop what `up` started, remove devices, config, state
#
# Both `up` and `down` are idempotent. `down` stops only daemons that `up` started (their pids are
# recorded in the state folder); a munged that was already running is used and left alone.
# Env: VIRNUCPRO_SLURM_STATE (state folder, default /tmp/virnucpro-ci/slurm),
#      VIRNUCPRO_SLURM_TIMEOUT (seconds to wait for the node to become idle, default 60).
set -euo pipefail

STATE=${VIRNUCPRO_SLURM_STATE:-/tmp/virnucpro-ci/slurm}
case $STATE in
    *[[:space:]#]*)
        echo "slurm.sh: VIRNUCPRO_SLURM_STATE='$STATE' holds a blank or '#', which slurm.conf cannot hold; give a state folder path without blanks or '#'" >&2
        exit 2 ;;
esac
LOCK=$(dirname "$STATE")/slurm.lock
TIMEOUT=${VIRNUCPRO_SLURM_TIMEOUT:-60}
CONF=/etc/slurm/slurm.conf
GRES_CONF=/etc/slurm/gres.conf
MARK='# Written by virnucpro .ci/slurm.sh'
FAKE_GPUS=(/tmp/virnucpro-fakegpu0 /tmp/virnucpro-fakegpu1)
PARTITION=debug
MUNGE_KEY=/etc/munge/munge.key
MUNGE_PIDFILE=/run/munge/munged.pid
NODE=$(hostname -s)
STARTED=()  # the daemons this invocation started

# Print a message on stderr.
say() { echo "slurm.sh: $*" >&2; }

# Print an error on stderr and stop.
die() { say "error: $*"; exit 1; }

# Stop unless running as root (daemons, /etc and mknod need it).
need_root() { [ "$(id -u)" -eq 0 ] || die "'$1' must run as root (try: sudo $0 $1)"; }

# Take the lock so that two `up`/`down` calls never interleave.
take_lock() {
    mkdir -p "$(dirname "$LOCK")"
    exec 9>"$LOCK"
    flock -w 300 9 || die "another slurm.sh holds $LOCK for more than 300 s"
}

# Install Debian's slurm-wlm and munge when any of their programs is missing.
ensure_packages() {
    local missing=0 prog
    for prog in munged munge unmunge slurmctld slurmd sbatch squeue sinfo scontrol scancel; do
        command -v "$prog" >/dev/null 2>&1 || [ -x "/usr/sbin/$prog" ] || missing=1
    done
    [ "$missing" -eq 0 ] && return 0
    say "installing slurm-wlm and munge with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >&2
    apt-get install -y -q --no-install-recommends slurm-wlm munge >&2
}

# True when pid $1 is alive and its program name is $2 (guards against recycled pids).
pid_is() {
    [ -n "$1" ] && [ -r "/proc/$1/comm" ] && [ "$(cat "/proc/$1/comm" 2>/dev/null)" = "$2" ]
}

# The pid that `up` recorded for daemon $1, when that daemon is still alive; empty otherwise.
our_pid() {
    local pid
    pid=$(cat "$STATE/ours.$1.pid" 2>/dev/null || true)
    if pid_is "$pid" "$1"; then echo "$pid"; fi
}

# Pids of running processes named exactly $1 (empty when none).
pids_named() { pgrep -x "$1" 2>/dev/null | tr '\n' ' ' || true; }

# True when munged answers: a credential made by munge is accepted by unmunge.
munge_works() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

# Create the munge key (1 KiB random, munge:munge, mode 400) unless one exists.
ensure_munge_key() {
    [ -s "$MUNGE_KEY" ] && return 0
    install -d -o munge -g munge -m 700 "$(dirname "$MUNGE_KEY")"
    (umask 277 && dd if=/dev/urandom of="$MUNGE_KEY" bs=1024 count=1 status=none)
    chown munge:munge "$MUNGE_KEY"
    chmod 400 "$MUNGE_KEY"
    say "created $MUNGE_KEY"
}

# Start munged as the munge user (as Debian's init script does) unless a munged already answers.
start_munged() {
    if munge_works; then
        [ -n "$(our_pid munged)" ] || say "munged is already running (not started by us; left alone)"
        return 0
    fi
    [ -z "$(pids_named munged)" ] || die "munged runs (pid $(pids_named munged)) but does not answer: see /var/log/munge/munged.log"
    ensure_munge_key
    install -d -o munge -g munge -m 755 "$(dirname "$MUNGE_PIDFILE")"
    : >"$STATE/starting.munged"  # from here on, a munged is ours (none ran): a stop before its pid is recorded still ends it
    # 9>&-: the daemon must not inherit (and so hold) our lock
    runuser -u munge -- /usr/sbin/munged --pid-file="$MUNGE_PIDFILE" 9>&- \
        || die "munged failed to start: $(tail -n 5 /var/log/munge/munged.log 2>/dev/null)"
    for _ in $(seq 50); do munge_works && break; sleep 0.2; done
    munge_works || die "munged started but 'munge -n | unmunge' fails: $(tail -n 5 /var/log/munge/munged.log 2>/dev/null)"
    cat "$MUNGE_PIDFILE" >"$STATE/ours.munged.pid"
    rm -f "$STATE/starting.munged"
    STARTED+=(munged)
    say "started munged (pid $(cat "$MUNGE_PIDFILE"))"
}

# Memory (MiB) to declare for the node: 95% of MemTotal, or of the cgroup limit when lower.
node_memory_mb() {
    local mb limit
    mb=$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)
    limit=$(cat /sys/fs/cgroup/memory.max 2>/dev/null || echo max)
    if [[ "$limit" =~ ^[0-9]+$ ]] && [ $((limit / 1048576)) -lt "$mb" ]; then mb=$((limit / 1048576)); fi
    echo $((mb * 95 / 100))
}

# The slurm.conf text for this machine (one node, one partition, no accounting database).
slurm_conf_text() {
    cat <<EOF
$MARK: a one-node test cluster; '.ci/slurm.sh down' removes it.
ClusterName=virnucpro-ci
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
# No cgroups (containers rarely delegate them): track job processes by process tree
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
# Share the node between jobs by cores and memory; a job that does not ask for memory gets
# DefMemPerCPU per CPU instead of the whole node, so small jobs run side by side
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
GresTypes=gpu
SchedulerType=sched/backfill
# Reject at submit what no partition allows (as most sites do) instead of pending forever
EnforcePartLimits=ALL
ReturnToService=2
SlurmdParameters=config_overrides
# Fast cleanup: 5 s from SIGTERM to SIGKILL; finished jobs leave squeue after 60 s
KillWait=5
MinJobAge=60
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=30
MailProg=/bin/true
# No slurmdbd: Nextflow follows jobs with squeue, so sacct is not needed
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$(nproc) RealMemory=$(node_memory_mb) Gres=gpu:${#FAKE_GPUS[@]} State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
}

# The gres.conf text: the simulated GPUs are character devices (slurmd refuses regular files).
gres_conf_text() {
    echo "$MARK: simulated GPUs for the test cluster."
    echo "AutoDetect=off"
    echo "Name=gpu File=/tmp/virnucpro-fakegpu[0-$((${#FAKE_GPUS[@]} - 1))]"
}

# Write $2 into file $1 unless it already holds exactly that; never overwrite a file we did not write.
write_config() {
    local path=$1 text=$2
    if [ -e "$path" ]; then
        head -n 1 "$path" | grep -qF "$MARK" \
            || die "$path exists and was not written by this script; refusing to overwrite a real SLURM configuration"
        [ "$(cat "$path")" = "$text" ] && return 0
        [ -z "$(our_pid slurmctld)$(our_pid slurmd)" ] \
            || die "$path would change while the cluster runs: run '$0 down' first"
    fi
    mkdir -p "$(dirname "$path")"
    printf '%s\n' "$text" >"$path.tmp.$$"
    chmod 644 "$path.tmp.$$"
    echo "$path" >>"$STATE/written"  # first: a stop between the two still finds it
    mv -f "$path.tmp.$$" "$path"
}

# Create the simulated GPU devices (like /dev/null: c 1 3) that gres.conf names.
make_fake_gpus() {
    local dev
    for dev in "${FAKE_GPUS[@]}"; do
        if [ -e "$dev" ]; then
            [ -c "$dev" ] || die "$dev exists but is not a character device; remove it"
        else
            echo "$dev" >>"$STATE/written"  # first: a stop between the two still finds it
            mknod -m 666 "$dev" c 1 3
        fi
    done
}

# Start daemon $1 (slurmctld or slurmd) unless ours already runs; refuse if someone else's runs.
start_slurm_daemon() {
    local name=$1 pid
    if [ -n "$(our_pid "$name")" ]; then return 0; fi
    pid=$(pids_named "$name")
    [ -z "$pid" ] || die "a $name that this script did not start is running (pid $pid); stop it first"
    rm -f "$STATE/$name.pid"
    : >"$STATE/starting.$name"  # from here on, a $name is ours (none ran): a stop before its pid is recorded still ends it
    "/usr/sbin/$name" 9>&- || die "$name failed to start:$(echo; tail -n 20 "$STATE/$name.log" 2>/dev/null)"
    for _ in $(seq 50); do [ -s "$STATE/$name.pid" ] && break; sleep 0.2; done
    pid=$(cat "$STATE/$name.pid" 2>/dev/null || true)
    pid_is "$pid" "$name" || die "$name exited at start:$(echo; tail -n 20 "$STATE/$name.log" 2>/dev/null)"
    echo "$pid" >"$STATE/ours.$name.pid"
    rm -f "$STATE/starting.$name"
    STARTED+=("$name")
    say "started $name (pid $pid)"
}

# The node's state as sinfo prints it (idle, mix, alloc, down*, drain, ...), empty if unknown.
node_state() { sinfo -h -N -n "$NODE" -o '%t' 2>/dev/null | head -n 1 || true; }

# Show the daemons' logs and the node's reason on stderr (for failures).
show_diagnostics() {
    {
        echo "---- sinfo / node"
        sinfo -N -l 2>&1 || true
        scontrol show node "$NODE" 2>&1 | grep -E 'State=|Reason=' || true
        echo "---- $STATE/slurmctld.log (last 30 lines)"
        tail -n 30 "$STATE/slurmctld.log" 2>&1 || true
        echo "---- $STATE/slurmd.log (last 30 lines)"
        tail -n 30 "$STATE/slurmd.log" 2>&1 || true
    } >&2
}

# Wait (at most $TIMEOUT s) until the node accepts jobs; on failure show the logs and stop.
wait_node_ready() {
    local deadline=$((SECONDS + TIMEOUT)) state
    while [ "$SECONDS" -lt "$deadline" ]; do
        state=$(node_state)
        case "$state" in
            idle | mix | alloc | comp) return 0 ;;
        esac
        sleep 1
    done
    show_diagnostics
    die "node $NODE did not become idle within $TIMEOUT s (state: '${state:-unknown}'); logs above"
}

# `up`: install, configure and start the cluster, then wait until it takes jobs.
cmd_up() {
    need_root up
    take_lock
    local t0=$SECONDS
    # A failed or stopped `up` stops what it started, so that no daemon outlives it (a stop signal
    # is an exit with 128 + the signal: the EXIT trap would see status 0 otherwise)
    trap 'on_up_exit $?' EXIT
    trap 'exit 143' TERM
    trap 'exit 130' INT
    trap 'exit 129' HUP
    ensure_packages
    mkdir -p "$STATE/ctld" "$STATE/slurmd"
    rm -f "$STATE/written"  # what this `up` writes (an earlier one's files are not its to remove)
    chmod 755 "$STATE"
    start_munged
    write_config "$CONF" "$(slurm_conf_text)"
    write_config "$GRES_CONF" "$(gres_conf_text)"
    make_fake_gpus
    start_slurm_daemon slurmctld
    start_slurm_daemon slurmd
    wait_node_ready
    trap - EXIT TERM INT HUP
    say "cluster up in $((SECONDS - t0)) s: node $NODE ($(nproc) CPUs, ${#FAKE_GPUS[@]} simulated GPUs), partition '$PARTITION'"
}

# Send SIGTERM to pid $1 (daemon $2), wait up to 30 s, then SIGKILL; return when it is gone.
stop_pid() {
    local pid=$1 name=$2
    pid_is "$pid" "$name" || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 150); do pid_is "$pid" "$name" || return 0; sleep 0.2; done
    say "$name (pid $pid) ignored SIGTERM for 30 s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    for _ in $(seq 50); do pid_is "$pid" "$name" || return 0; sleep 0.2; done
    die "$name (pid $pid) is still running after SIGKILL"
}

# Cancel every job of our cluster and wait (at most 30 s) until squeue is empty.
cancel_all_jobs() {
    local jobs
    jobs=$(squeue -h -o '%i' 2>/dev/null | tr '\n' ' ' || true)
    [ -n "${jobs// /}" ] || return 0
    say "cancelling jobs: $jobs"
    # shellcheck disable=SC2086
    scancel $jobs 2>/dev/null || true
    for _ in $(seq 30); do
        [ -z "$(squeue -h -t all -o '%i %t' 2>/dev/null | awk '$2 != "CA" && $2 != "CD" && $2 != "F" && $2 != "TO"')" ] && return 0
        sleep 1
    done
    say "some jobs were still ending after 30 s"
}

# Stop job steps left behind by our slurmd (only ours can exist: `up` refuses a foreign slurmd).
stop_leftover_steps() {
    local pid
    for pid in $(pids_named slurmstepd); do
        say "stopping leftover slurmstepd (pid $pid)"
        stop_pid "$pid" slurmstepd
    done
}

# On a failed `up` (status $1), stop what it started and remove what it wrote.
on_up_exit() {
    [ "$1" -eq 0 ] && return 0
    trap '' TERM INT HUP  # a second stop (a CI cancel sends several) must not cut the clean-up short
    say "'up' failed: stopping what it started"
    teardown written
}

# `down`: cancel jobs, stop what `up` started, remove devices, configuration and state.
cmd_down() {
    need_root down
    take_lock
    local t0=$SECONDS
    teardown
    say "cluster down in $((SECONDS - t0)) s"
}

# Cancel jobs, stop the daemons that `up` started, remove devices, configuration and state; with
# `written` (a failed `up`), only the files and devices this `up` wrote (a cluster of another state
# folder may run on them).
teardown() {
    local ctld slurmd dev pid
    ctld=$(to_stop slurmctld "${1:-}")
    slurmd=$(to_stop slurmd "${1:-}")
    [ -n "$ctld" ] && cancel_all_jobs
    for pid in $slurmd; do stop_pid "$pid" slurmd; done
    [ -n "$slurmd" ] && stop_leftover_steps
    for pid in $ctld; do stop_pid "$pid" slurmctld; done
    for pid in $(to_stop munged "${1:-}"); do stop_pid "$pid" munged; done
    for dev in $(removable_files "${1:-}"); do
        if [ -c "$dev" ] || { [ -f "$dev" ] && head -n 1 "$dev" | grep -qF "$MARK"; }; then rm -f "$dev"; fi
    done
    if [ -z "${1:-}" ] || [ -z "$(our_pid munged)$(our_pid slurmctld)$(our_pid slurmd)" ]; then
        rm -rf "$STATE"
    else  # a failed `up` beside a cluster an earlier `up` started: that one keeps its state
        rm -f "$STATE"/starting.* "$STATE/written"
    fi
}

# The pids of daemon $1 to stop: the one `up` recorded (with $2 = written, a failed `up`: only if
# this `up` started it), or, when `up` was stopped while starting it (before its pid was recorded),
# every process of that name (`up` starts one only when none runs).
to_stop() {
    local pid
    pid=$(our_pid "$1")
    if [ -n "$pid" ] && { [ "$2" != written ] || [[ " ${STARTED[*]} " == *" $1 "* ]]; }; then
        echo "$pid"
    elif [ -z "$pid" ] && [ -e "$STATE/starting.$1" ]; then
        pids_named "$1"
    fi
}

# The configuration files and devices to remove: those this `up` wrote ($1 = written), else ours by
# name (marked files, the simulated GPUs).
removable_files() {
    if [ "$1" = written ]; then
        cat "$STATE/written" 2>/dev/null || true
    else
        printf '%s\n' "${FAKE_GPUS[@]}" "$CONF" "$GRES_CONF"
    fi
}

# Describe one daemon: ours / someone else's / not running.
daemon_line() {
    local name=$1 ours others
    ours=$(our_pid "$name")
    others=$(pids_named "$name")
    if [ -n "$ours" ]; then
        echo "$name: running, started by slurm.sh (pid $ours)"
    elif [ -n "$others" ]; then
        echo "$name: running, NOT started by slurm.sh (pid $others)"
    else
        echo "$name: not running"
    fi
}

# `status`: daemons, node and queue; exit 0 when the node takes jobs, 3 otherwise.
cmd_status() {
    local name state
    for name in munged slurmctld slurmd; do daemon_line "$name"; done
    state=$(node_state)
    echo "node $NODE: ${state:-unknown}"
    if [ -n "$state" ]; then
        sinfo
        squeue
    fi
    case "$state" in idle | mix | alloc | comp) return 0 ;; *) return 3 ;; esac
}

case "${1:-}" in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    *)
        echo "usage: $0 up|down|status" >&2
        exit 2
        ;;
esac
