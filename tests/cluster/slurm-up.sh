#!/usr/bin/env bash
# Bring up a real single-node Slurm cluster on this machine (root, Debian 12, no systemd needed):
# munged + slurmctld + slurmd started by this script with pid files, fake GPUs through GRES so
# `sbatch --gpus=N` works on a CPU box and jobs see CUDA_VISIBLE_DEVICES set by Slurm.
#
#   sudo bash tests/cluster/slurm-up.sh          # FAKE_GPUS=2 by default (0 = no GRES)
#   NODES=2 bash tests/cluster/slurm-up.sh       # two nodes <host>-0, <host>-1 on this machine (one
#                                                # slurmd each, ports 17000+i; each with all CPUs and
#                                                # FAKE_GPUS fake GPUs), for multi-node jobs
#   SLURMD_NICE=10 bash tests/cluster/slurm-up.sh  # jobs run niced (shared machines)
#   sudo bash tests/cluster/slurm-down.sh        # stop everything this script started
#
# Idempotent: packages are installed only when missing, daemons started only when not already
# running with the same configuration (a changed configuration restarts them). Every wait is
# bounded; on any failure it exits non-zero with a message naming the failed step and the log.
# Settings chosen for sandboxes without cgroups (gVisor, containers): proctrack/linuxproc,
# task/none; no slurmdbd (accounting_storage/none), hence MinJobAge=300 so that `squeue
# --states=all` still shows finished jobs (the Snakemake plugin's `slurm-status-command: squeue`).
set -euo pipefail

FAKE_GPUS="${FAKE_GPUS:-2}"
NODES="${NODES:-1}"
PARTITION="${SLURM_CI_PARTITION:-debug}"
APT_TIMEOUT="${SLURM_UP_APT_TIMEOUT:-600}"   # seconds for apt-get update + install
WAIT_S="${SLURM_UP_WAIT:-60}"                # seconds for each daemon / node / test-job wait
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
T0=$(date +%s.%N)

CONF_DIR=/etc/slurm
RUN_DIR=/run/slurm
LOG_DIR=/var/log/slurm
MUNGE_PID=/run/munge/munged.pid
CTLD_PID=$RUN_DIR/slurmctld.pid
SLURMD_PID=$RUN_DIR/slurmd.pid # one node; with NODES > 1 each slurmd has its own ($RUN_DIR/slurmd-<node>.pid)

say() { echo "slurm-up: $*"; }
die() {
    echo "slurm-up: FAILED: $*" >&2
    for f in "$LOG_DIR/slurmctld.log" "$LOG_DIR/slurmd.log" /var/log/munge/munged.log; do
        [ -s "$f" ] && { echo "---- last lines of $f" >&2; tail -n 15 "$f" >&2; }
    done
    exit 1
}
elapsed() { awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}'; }

# alive PIDFILE NAME: the pid file names a live process whose command is NAME
alive() {
    local pid
    [ -s "$1" ] || return 1
    pid=$(tr -dc 0-9 <"$1")
    [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] && [ "$(cat "/proc/$pid/comm")" = "$2" ]
}
# wait_for SECONDS DESCRIPTION COMMAND...: poll every 0.5 s, fail after SECONDS
wait_for() {
    local secs=$1 what=$2 i
    shift 2
    for ((i = 0; i < secs * 2; i++)); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.5
    done
    die "timed out after ${secs}s waiting for $what"
}

[ "$(id -u)" -eq 0 ] || die "must run as root (installs packages, starts daemons)"
[[ "$FAKE_GPUS" =~ ^[0-9]+$ ]] || die "FAKE_GPUS must be a non-negative integer, got '$FAKE_GPUS'"
[[ "$NODES" =~ ^[1-9][0-9]*$ ]] || die "NODES must be a positive integer, got '$NODES'"

# ---- 1. packages ------------------------------------------------------------------------------
need=()
for bin in /usr/sbin/slurmctld:slurmctld /usr/sbin/slurmd:slurmd /usr/bin/sbatch:slurm-client \
    /usr/sbin/munged:munge; do
    [ -x "${bin%%:*}" ] || need+=("${bin##*:}")
done
if [ ${#need[@]} -gt 0 ]; then
    command -v apt-get >/dev/null || die "packages missing (${need[*]}) and no apt-get"
    say "installing ${need[*]} with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    # policy-rc.d keeps the postinst scripts from starting daemons we would not own (pid files).
    own_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
        own_policy=1
    fi
    apt_ok=1
    timeout "$APT_TIMEOUT" apt-get update -qq || apt_ok=0
    [ $apt_ok = 1 ] && { timeout "$APT_TIMEOUT" apt-get install -y -qq --no-install-recommends \
        -o DPkg::Lock::Timeout=120 slurmctld slurmd slurm-client munge >/dev/null || apt_ok=0; }
    [ $own_policy = 1 ] && rm -f /usr/sbin/policy-rc.d
    [ $apt_ok = 1 ] || die "apt-get update/install of slurmctld slurmd slurm-client munge failed"
    say "packages installed ($(elapsed)s)"
fi
VERSION=$(/usr/sbin/slurmctld -V 2>/dev/null || true)

# ---- 2. configuration -------------------------------------------------------------------------
HOST=$(hostname -s)
# What slurmd itself detects (a node configured with more than that is INVALID, with fewer
# wastes cores); never `nproc`, which obeys OMP_NUM_THREADS.
CPUS=$(/usr/sbin/slurmd -C 2>/dev/null | sed -n 's/.* CPUs=\([0-9]*\).*/\1/p' | head -n1)
[ -n "$CPUS" ] || CPUS=$(getconf _NPROCESSORS_ONLN)
MEM=$(($(awk '/MemTotal/{print int($2/1024)}' /proc/meminfo) * 8 / 10))
mkdir -p "$CONF_DIR" "$RUN_DIR" "$LOG_DIR" /var/spool/slurmctld /var/spool/slurmd \
    /run/munge /var/log/munge /var/lib/munge /etc/munge

# Node names: the host itself for one node; <host>-0 .. <host>-(NODES-1) for several, each slurmd
# on its own port (Debian's slurmd is built with multiple-slurmd support), all at 127.0.0.1.
NODE_NAMES=()
if [ "$NODES" -eq 1 ]; then
    NODE_NAMES=("$HOST")
else
    for ((n = 0; n < NODES; n++)); do NODE_NAMES+=("$HOST-$n"); done
fi
gres_node="" gres_types=""
gres_conf=""
if [ "$FAKE_GPUS" -gt 0 ]; then
    # Each fake GPU needs a distinct existing device file; Slurm only stat()s it (no GPU driver).
    total=$((FAKE_GPUS * NODES))
    for ((i = 0; i < total; i++)); do
        [ -e "/dev/tty$i" ] || die "FAKE_GPUS=$FAKE_GPUS x NODES=$NODES needs /dev/tty0../dev/tty$((total - 1)); /dev/tty$i is missing"
    done
    gres_types="GresTypes=gpu"
    gres_node="Gres=gpu:fake:$FAKE_GPUS"
    for ((n = 0; n < NODES; n++)); do
        first=$((n * FAKE_GPUS)) last=$((n * FAKE_GPUS + FAKE_GPUS - 1))
        files="/dev/tty$first"
        [ "$FAKE_GPUS" -gt 1 ] && files="/dev/tty[$first-$last]"
        gres_conf+="NodeName=${NODE_NAMES[n]} Name=gpu Type=fake File=$files"$'\n'
    done
    gres_conf="${gres_conf%$'\n'}"
fi
node_lines=""
if [ "$NODES" -eq 1 ]; then
    node_lines="NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM $gres_node State=UNKNOWN"
    SLURMD_PIDS=("$SLURMD_PID")
else
    SLURMD_PIDS=()
    for ((n = 0; n < NODES; n++)); do
        node_lines+="NodeName=${NODE_NAMES[n]} NodeHostname=$HOST NodeAddr=127.0.0.1 Port=$((17000 + n)) CPUs=$CPUS RealMemory=$((MEM / NODES)) $gres_node State=UNKNOWN"$'\n'
        SLURMD_PIDS+=("$RUN_DIR/slurmd-${NODE_NAMES[n]}.pid")
        mkdir -p "/var/spool/slurmd/${NODE_NAMES[n]}"
    done
    node_lines="${node_lines%$'\n'}"
fi
node_list=$(IFS=,; echo "${NODE_NAMES[*]}")
# per-node files when several slurmd share the machine (%n: the node name)
slurmd_suffix=""
[ "$NODES" -gt 1 ] && slurmd_suffix="-%n"

new_conf=$(
    cat <<EOF
# Written by tests/cluster/slurm-up.sh (CI cluster on one machine, NODES=$NODES, FAKE_GPUS=$FAKE_GPUS). Do not edit.
ClusterName=pvdm-ci
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
# no cgroups in the sandbox
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# no slurmdbd: sacct cannot answer, squeue must (finished jobs stay visible MinJobAge seconds)
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge=300
ReturnToService=2
KillWait=5
InactiveLimit=0
SlurmdTimeout=60
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$RUN_DIR/slurmd$slurmd_suffix.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd$slurmd_suffix.log
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd${slurmd_suffix/-/\/}
# prints each task's GPU binding into the job's output (the Snakemake Slurm log)
TaskProlog=$CONF_DIR/task-prolog.sh
$gres_types
$node_lines
PartitionName=$PARTITION Nodes=$node_list Default=YES MaxTime=INFINITE State=UP
EOF
)
# TaskProlog: "print ..." lines go to the task's stdout, i.e. the job's log file. This makes the
# devices Slurm bound (CUDA_VISIBLE_DEVICES from the GRES plugin) visible for every batch script
# and every `srun` step, e.g. the step in which the Snakemake jobstep runs the rule.
cat >"$CONF_DIR/task-prolog.sh" <<'PROLOG'
#!/bin/sh
echo "print slurm-task: job=${SLURM_JOB_ID} step=${SLURM_STEP_ID:-batch} node=${SLURMD_NODENAME} CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES-unset} SLURM_JOB_GPUS=${SLURM_JOB_GPUS-unset}"
PROLOG
chmod 0755 "$CONF_DIR/task-prolog.sh"
changed=0
if [ "$new_conf" != "$(cat "$CONF_DIR/slurm.conf" 2>/dev/null)" ]; then
    printf '%s\n' "$new_conf" >"$CONF_DIR/slurm.conf"
    changed=1
fi
if [ "$gres_conf" != "$(grep -v '^#' "$CONF_DIR/gres.conf" 2>/dev/null)" ]; then
    if [ -n "$gres_conf" ]; then
        printf '# Written by tests/cluster/slurm-up.sh\n%s\n' "$gres_conf" >"$CONF_DIR/gres.conf"
    else
        echo "# Written by tests/cluster/slurm-up.sh (no fake GPUs)" >"$CONF_DIR/gres.conf"
    fi
    changed=1
fi
any_slurmd() {
    local f
    for f in "$RUN_DIR"/slurmd*.pid; do alive "$f" slurmd && return 0; done
    return 1
}
if [ $changed = 1 ] && { alive "$CTLD_PID" slurmctld || any_slurmd; }; then
    say "configuration changed: restarting the Slurm daemons"
    SLURM_DOWN_KEEP_MUNGE=1 SLURM_DOWN_KEEP_CONF=1 bash "$HERE/slurm-down.sh" || die "could not stop the running daemons"
fi

# ---- 3. munge ---------------------------------------------------------------------------------
id munge >/dev/null 2>&1 || die "user 'munge' missing (package munge not installed correctly?)"
if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
fi
chown -R munge:munge /etc/munge /run/munge /var/log/munge /var/lib/munge
chmod 0700 /etc/munge /var/log/munge /var/lib/munge
chmod 0755 /run/munge
chmod 0400 /etc/munge/munge.key
if ! alive "$MUNGE_PID" munged; then
    rm -f "$MUNGE_PID"
    runuser -u munge -- /usr/sbin/munged || die "munged did not start"
    wait_for "$WAIT_S" "munged pid file $MUNGE_PID" alive "$MUNGE_PID" munged
fi
wait_for "$WAIT_S" "a munge credential round trip" bash -c 'munge -n | unmunge'

# ---- 4. slurmctld + slurmd --------------------------------------------------------------------
if ! alive "$CTLD_PID" slurmctld; then
    rm -f "$CTLD_PID"
    /usr/sbin/slurmctld || die "slurmctld did not start"
    wait_for "$WAIT_S" "slurmctld pid file $CTLD_PID" alive "$CTLD_PID" slurmctld
fi
wait_for "$WAIT_S" "slurmctld to answer (scontrol ping)" bash -c 'scontrol ping | grep -q UP'
for ((n = 0; n < NODES; n++)); do
    pidfile=${SLURMD_PIDS[n]}
    alive "$pidfile" slurmd && continue
    rm -f "$pidfile"
    name_arg=()
    [ "$NODES" -gt 1 ] && name_arg=(-N "${NODE_NAMES[n]}")
    # Jobs inherit slurmd's nice value (PropagatePrioProcess=0): SLURMD_NICE=10 on shared boxes.
    nice -n "${SLURMD_NICE:-0}" /usr/sbin/slurmd "${name_arg[@]}" || die "slurmd ${name_arg[*]} did not start"
    wait_for "$WAIT_S" "slurmd pid file $pidfile" alive "$pidfile" slurmd
done

node_state() { sinfo -h -n "$1" -o %T 2>/dev/null | head -n1; }
for node in "${NODE_NAMES[@]}"; do
    state=""
    for ((i = 0; i < WAIT_S * 2; i++)); do
        state=$(node_state "$node")
        case "$state" in
        idle* | mixed* | allocated* | completing*) break ;;
        down* | drain*)
            # e.g. left down by an earlier unclean stop; ReturnToService=2 normally handles it
            scontrol update NodeName="$node" State=RESUME >/dev/null 2>&1 || true ;;
        inval*) die "node $node is INVALID: $(scontrol show node "$node" | grep -i reason)" ;;
        esac
        sleep 0.5
    done
    case "$state" in
    idle* | mixed* | allocated* | completing*) ;;
    *) die "node $node not usable after ${WAIT_S}s (state '${state:-none}'): $(scontrol show node "$node" 2>&1 | grep -i reason)" ;;
    esac
done

# ---- 5. test job (GPU request when fake GPUs exist) --------------------------------------------
out=$(mktemp /tmp/slurm-up-test.XXXXXX)
# the whole node: all CPUs and all fake GPUs must be allocatable
gpu_args=(-c "$CPUS")
[ "$FAKE_GPUS" -gt 0 ] && gpu_args+=(--gpus="$FAKE_GPUS")
if ! timeout "$WAIT_S" sbatch --wait --quiet -J slurm-up-test -t 1 -o "$out" "${gpu_args[@]}" \
    --wrap 'echo "job=$SLURM_JOB_ID node=$SLURMD_NODENAME CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES-unset}"'; then
    cat "$out" >&2 || true
    die "test job (sbatch --wait ${gpu_args[*]}) failed or took more than ${WAIT_S}s"
fi
result=$(tr "\n" " " <"$out")
rm -f "$out"
if [ "$FAKE_GPUS" -gt 0 ]; then
    want=$(seq -s, 0 $((FAKE_GPUS - 1)))
    [[ "$result" == *"CUDA_VISIBLE_DEVICES=$want"* ]] ||
        die "test job did not see CUDA_VISIBLE_DEVICES=$want (got: $result)"
fi
say "test job: $result"
say "OK: $VERSION, node(s) $node_list CPUs=$CPUS RealMemory=${MEM}M $gres_node partition=$PARTITION; bring-up wall time $(elapsed)s"
