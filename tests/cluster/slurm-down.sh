#!/usr/bin/env bash
# Stop the single-node Slurm cluster started by tests/cluster/slurm-up.sh: cancel its jobs, then
# stop slurmd, slurmctld and munged by their pid files (SIGTERM, bounded wait, then SIGKILL).
# Only processes named in those pid files are signalled. Safe to run when nothing is running.
#   SLURM_DOWN_KEEP_MUNGE=1   leave munged running (used by slurm-up.sh on a config change)
#   SLURM_DOWN_KEEP_CONF=1    leave /etc/slurm/slurm.conf in place (used by slurm-up.sh likewise)
#   SLURM_DOWN_WAIT=15        seconds to wait for each daemon / for running jobs to end
# Otherwise our own slurm.conf is parked (renamed slurm.conf.pvdm-ci-stopped): with a controller that no
# longer runs, every Slurm client call waits MessageTimeout (~9 s) for it, and Snakemake's Slurm
# plugin runs `scontrol show config` at every start, on every executor. Without a config the call
# fails at once. A slurm.conf not written by slurm-up.sh is never touched.
set -uo pipefail

WAIT_S="${SLURM_DOWN_WAIT:-15}"
CTLD_PID=/run/slurm/slurmctld.pid
MUNGE_PID=/run/munge/munged.pid
T0=$(date +%s.%N)
rc=0

say() { echo "slurm-down: $*"; }
# pid_of PIDFILE NAME: the pid in PIDFILE if that process is alive and is NAME
pid_of() {
    local pid
    [ -s "$1" ] || return 1
    pid=$(tr -dc 0-9 <"$1")
    [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] && [ "$(cat "/proc/$pid/comm")" = "$2" ] && echo "$pid"
}

stop() { # stop PIDFILE NAME
    local pid i
    pid=$(pid_of "$1" "$2") || { say "$2 not running"; rm -f "$1"; return 0; }
    kill -TERM "$pid" 2>/dev/null
    for ((i = 0; i < WAIT_S * 4; i++)); do
        [ -d "/proc/$pid" ] || break
        sleep 0.25
    done
    if [ -d "/proc/$pid" ]; then
        say "$2 (pid $pid) ignored SIGTERM for ${WAIT_S}s: SIGKILL"
        kill -KILL "$pid" 2>/dev/null
        for ((i = 0; i < 20; i++)); do
            [ -d "/proc/$pid" ] || break
            sleep 0.25
        done
    fi
    if [ -d "/proc/$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ]; then
        say "ERROR: $2 (pid $pid) still alive"
        rc=1
    else
        say "stopped $2 (pid $pid)"
        rm -f "$1"
    fi
}

# Cancel what is still queued or running, so no job step outlives the daemons.
if pid_of "$CTLD_PID" slurmctld >/dev/null && command -v squeue >/dev/null; then
    jobs=$(timeout 10 squeue -h -t PD,R,CG,CF,S -o %i 2>/dev/null | tr '\n' ' ')
    if [ -n "${jobs// /}" ]; then
        say "cancelling jobs: $jobs"
        # shellcheck disable=SC2086
        timeout 10 scancel $jobs 2>/dev/null
        for ((i = 0; i < WAIT_S * 2; i++)); do
            [ -z "$(timeout 10 squeue -h -t PD,R,CG,CF,S -o %i 2>/dev/null)" ] && break
            sleep 0.5
        done
    fi
fi

for pidfile in /run/slurm/slurmd*.pid; do # one per node (NODES > 1 in slurm-up.sh)
    [ -e "$pidfile" ] && stop "$pidfile" slurmd
done
stop "$CTLD_PID" slurmctld
[ "${SLURM_DOWN_KEEP_MUNGE:-0}" = 1 ] || stop "$MUNGE_PID" munged

CONF=/etc/slurm/slurm.conf
if [ "${SLURM_DOWN_KEEP_CONF:-0}" != 1 ] && [ $rc = 0 ] && head -n1 "$CONF" 2>/dev/null | grep -q '^# Written by tests/cluster/slurm-up.sh'; then
    mv -f "$CONF" "$CONF.pvdm-ci-stopped" && say "parked $CONF as $CONF.pvdm-ci-stopped (slurm-up.sh writes it again)"
fi

# Report (never kill by name) job-step daemons that survived, e.g. after a SIGKILLed slurmd.
left=$(for d in /proc/[0-9]*; do [ "$(cat "$d/comm" 2>/dev/null)" = slurmstepd ] && echo "${d#/proc/}"; done | tr '\n' ' ')
[ -n "${left// /}" ] && say "warning: slurmstepd processes still running: $left"

say "done in $(awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}')s"
exit $rc
