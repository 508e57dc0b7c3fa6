#!/usr/bin/env bash
# tests/slurm/cluster.sh -- a real one-node SLURM cluster for loss-slope's tests.
#
# Usage (as root; every step is bounded by `timeout`):
#   tests/slurm/cluster.sh up [--no-install]   install (if missing), configure, start, wait for an idle node
#   tests/slurm/cluster.sh down [--if-unused] [--purge]
#                                              stop only the daemons this script started
#   tests/slurm/cluster.sh status              daemons, node and queue; exit 0 = up, 3 = not up
#   tests/slurm/cluster.sh wait-idle [SECS]    wait until the queue is empty and the node idle
#   tests/slurm/cluster.sh env                 shell `export` lines: partition, account, GPU model ...
#   eval "$(tests/slurm/cluster.sh env)"       ... for use in a shell or a test
#
# What it builds (everything below is overridable through the environment, see
# "Knobs"):
#   * Debian 12 packages slurmctld slurmd slurm-client munge slurmdbd mariadb-server
#     (installed with apt-get only when missing; daemons are never started by dpkg
#     because policy-rc.d denies it -- a temporary one is created if none exists).
#   * munged (reused if one already answers on the default socket), a PRIVATE
#     mariadb instance (datadir /var/lib/loss-slope-slurm/mysql, TCP 127.0.0.1:3307,
#     its own socket -- it never touches a system mariadb), slurmdbd, slurmctld,
#     slurmd; all run as root, no systemd, no cgroups.
#   * /etc/slurm/{slurm,gres,slurmdbd}.conf, marked "managed-by: loss-slope";
#     an existing unmarked slurm.conf is never overwritten (refuses instead).
#   * node = `hostname -s`, advertising 8 CPUs / 32000 MB / 2 fake GPUs of type
#     "fakegpu" (SlurmdParameters=config_overrides), one partition "debug"
#     (default), cluster "lossslope", account "loss-slope" (root is a member).
#   * state: /run/loss-slope-slurm (pid files, `started` list, env, lock),
#     /var/lib/loss-slope-slurm (db, slurmctld state, fake devices),
#     /var/log/loss-slope-slurm (daemon logs).
#
# Why slurmdbd + mariadb and not `slurm-status-command: squeue`:
#   * snakemake-executor-plugin-slurm 2.8 defaults to `sacct` whenever the sacct
#     BINARY exists (`which sacct`), and slurm-client always ships it. Without
#     slurmdbd every status query fails and Snakemake waits forever.
#   * squeue forgets a job MinJobAge seconds after it ends, and a job that
#     vanished from squeue is treated as "still running" -> hang. The plugin's own
#     rule of thumb (MinJobAge >= 3 x init-seconds-before-status-checks) is not
#     enough: the poll interval grows by 10 s per quiet poll up to 180 s, so a
#     long training job can end and vanish between two polls unless
#     MinJobAge > 180 s + margin. The plugin also silently switches squeue back
#     to sacct when MinJobAge < 3 x init delay.
#   * with squeue a failed job gets no reason ("Detailed failure reason
#     unavailable"); sacct gives per-step reasons.
#   * the plugin validates `slurm_account` with `sacctmgr`/`sshare`; both need
#     slurmdbd, so without it any profile that names an account fails.
#     (`--slurm-no-account` exists in 2.8 but is not used anywhere in its code.)
#   * real clusters run slurmdbd; the test cluster should exercise the same path.
#   Cost: ~30 more packages (once), ~0.1 GB RAM for mariadb, ~5 s more start-up.
#
# What was learned on this machine (Debian 12, slurm 22.05.8, 2 cores, no GPU):
#   * Debian 12 ships slurm-wlm 22.05.8. apt-get update + install of the six
#     packages (+ ~30 deps) took ~20 s with a warm apt cache. Their postinst
#     scripts try `invoke-rc.d start`; this image already has a policy-rc.d that
#     denies it (exit 101).
#   * `up` timings: ~6 s from nothing (incl. ~2 s mariadb-install-db), ~3-4 s
#     with existing state, ~0.1 s when already up. `down` ~10 s (each daemon
#     takes 1-4 s to exit after SIGTERM).
#   * Daemons inherit open fds: started while `up` held its flock fd, they kept
#     the lock and the next `up` blocked forever -> every daemon is started with
#     `9>&-`. Likewise their stdio goes to files, never to the caller's pipes.
#   * `sbatch --gpus=1` (or --gpus=fakegpu:1) sets CUDA_VISIBLE_DEVICES=0 or 1
#     (also SLURM_JOB_GPUS, GPU_DEVICE_ORDINAL); two such jobs run at once on
#     distinct indices, a third pends with Reason=Resources. Two device files
#     with the same numbers (c 1 3) are enough; no cgroups are involved.
#   * The node advertises 8 CPUs on a 2-core machine. Jobs asking for CPUs that
#     do not exist still run: task/affinity logs "batch_bind: more resources
#     configured than exist" / "error: job N allocated no CPUs" and binds
#     nothing (Cpus_allowed_list 0-1). Harmless.
#   * The plugin's job step runs `srun -n1 --cpu-bind=q --cpus-per-task=C
#     --gpus=1 ...` inside the allocation; it works and sees the same GPU.
#     The step strips SLURM_CONF, so the config must live in /etc/slurm.
#   * A retry submitted with --begin=now+D became eligible after D s but waited
#     38 s more for SLURM's periodic pass (sched_interval=60 s default) ->
#     SchedulerParameters=sched_interval=5,bf_interval=5 (then ~1 s).
#   * sacct answers as soon as a job is submitted; the plugin's account check
#     (`sacctmgr -n -s list user root`) lists "loss-slope" and "root".
#   * Harmless log noise: mpi/pmix "can not load PMIx library", slurmctld "No
#     job state file" on a fresh state dir, slurmdbd "Database settings not
#     recommended values: innodb_buffer_pool_size ..." (kept small on purpose).
#     MailProg=/bin/true silences "Configured MailProg is invalid".
#   * /run is on the root file system here (not tmpfs), so pid files survive a
#     reboot; a pid is only trusted if /proc/PID/comm names the daemon.
set -euo pipefail

# ---------------------------------------------------------------- knobs
STATE=${LOSS_SLOPE_SLURM_STATE:-/run/loss-slope-slurm}
DATA=${LOSS_SLOPE_SLURM_DATA:-/var/lib/loss-slope-slurm}
LOGS=${LOSS_SLOPE_SLURM_LOGS:-/var/log/loss-slope-slurm}
CONF_DIR=/etc/slurm            # fixed: the job step strips SLURM_CONF
CLUSTER=${LOSS_SLOPE_SLURM_CLUSTER:-lossslope}
PARTITION=${LOSS_SLOPE_SLURM_PARTITION:-debug}
CPU_PARTITION=${LOSS_SLOPE_SLURM_CPU_PARTITION:-cpu}
ACCOUNT=${LOSS_SLOPE_SLURM_ACCOUNT:-loss-slope}
GPU_TYPE=${LOSS_SLOPE_SLURM_GPU_MODEL:-fakegpu}
NGPUS=${LOSS_SLOPE_SLURM_GPUS:-2}
NCPUS=${LOSS_SLOPE_SLURM_CPUS:-8}
MEM_MB=${LOSS_SLOPE_SLURM_MEM_MB:-32000}
DEF_MEM_PER_CPU=${LOSS_SLOPE_SLURM_DEF_MEM_PER_CPU:-1000}
DB_PORT=${LOSS_SLOPE_SLURM_DB_PORT:-3307}
UP_TIMEOUT=${LOSS_SLOPE_SLURM_UP_TIMEOUT:-120}   # seconds for daemons + idle node
APT_TIMEOUT=${LOSS_SLOPE_SLURM_APT_TIMEOUT:-900}
NODE=$(hostname -s)
MARK="# managed-by: loss-slope tests/slurm/cluster.sh (do not edit; regenerated by 'up')"
PKGS=(munge slurm-client slurmctld slurmd slurmdbd mariadb-server)
DB_NAME=${CLUSTER}_acct_db
DB_USER=slurm
DB_PASS=loss-slope-test-only     # private, loopback-only test database
MYSQL_DIR=$DATA/mysql
MYSQL_RUN=$STATE/mysql
MYSQL_SOCK=$MYSQL_RUN/mysqld.sock

log() { printf '[cluster.sh %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
t() { local s=$1; shift; timeout -k 5 "$s" "$@"; }   # every external wait is bounded

need_root() { [ "$(id -u)" = 0 ] || die "must run as root (it installs packages and starts daemons)"; }

# ------------------------------------------------------------- ownership
# $STATE/started has one line NAME per daemon this script started; its pid
# comes from the daemon's own pid file (see pidfile_of).
# `down` stops exactly those (after checking /proc/PID/comm), nothing else.
record_started() {
    [ -f "$STATE/started" ] && sed -i "/^$1\$/d" "$STATE/started"
    echo "$1" >>"$STATE/started"
}
pidfile_of() {
    case $1 in
    munged) echo /run/munge/munged.pid ;;
    mariadb) echo "$MYSQL_RUN/mariadb.pid" ;;
    *) echo "$STATE/$1.pid" ;;
    esac
}
comm_ok() { # pid name: /proc/PID/comm is that daemon (guards against reused pids)
    local comm
    comm=$(cat "/proc/$1/comm" 2>/dev/null) || return 1
    case $2 in
    mariadb) [ "$comm" = mariadbd ] ;;
    *) [ "$comm" = "$2" ] ;;
    esac
}
pid_of() { # name -> pid if that daemon is alive per its pid file
    local f p
    f=$(pidfile_of "$1")
    [ -s "$f" ] || return 1
    p=$(tr -dc 0-9 <"$f")
    [ -n "$p" ] && kill -0 "$p" 2>/dev/null && comm_ok "$p" "$1" && { echo "$p"; return 0; }
    return 1
}
we_started() { [ -f "$STATE/started" ] && grep -qx "$1" "$STATE/started"; }

# --------------------------------------------------------------- install
pkg_installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

install_packages() {
    local missing=() p
    for p in "${PKGS[@]}"; do pkg_installed "$p" || missing+=("$p"); done
    [ ${#missing[@]} -eq 0 ] && return 0
    [ "${NO_INSTALL:-0}" = 1 ] && die "packages missing and --no-install given: ${missing[*]}"
    command -v apt-get >/dev/null || die "apt-get not found; install ${missing[*]} by hand"
    log "installing ${missing[*]} (apt-get, once)"
    local made_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        # keep dpkg from starting the daemons with Debian's default config
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        made_policy=1
    fi
    local rc=0
    t "$APT_TIMEOUT" apt-get update -qq >"$LOGS/apt.log" 2>&1 || rc=$?
    if [ $rc -eq 0 ]; then
        DEBIAN_FRONTEND=noninteractive t "$APT_TIMEOUT" apt-get install -y -q \
            --no-install-recommends "${missing[@]}" >>"$LOGS/apt.log" 2>&1 || rc=$?
    fi
    [ $made_policy = 1 ] && rm -f /usr/sbin/policy-rc.d
    if [ $rc -ne 0 ]; then
        tail -n 20 "$LOGS/apt.log" >&2 || true
        log "APT-FAILED: apt-get exited $rc (log: $LOGS/apt.log)"
        exit 4   # distinct code: the tests skip on it
    fi
}

# ---------------------------------------------------------------- config
write_if_changed() { # path mode content -> returns 0 if changed
    local path=$1 mode=$2 content=$3
    if [ -f "$path" ] && [ "$(cat "$path")" = "$content" ]; then return 1; fi
    printf '%s\n' "$content" >"$path.tmp.$$"
    chmod "$mode" "$path.tmp.$$"
    mv -f "$path.tmp.$$" "$path"
    return 0
}

check_conf_ours() {
    local f
    for f in slurm.conf gres.conf slurmdbd.conf; do
        if [ -e "$CONF_DIR/$f" ] && ! head -n 1 "$CONF_DIR/$f" | grep -qF "managed-by: loss-slope"; then
            [ "${LOSS_SLOPE_SLURM_FORCE:-0}" = 1 ] || die "$CONF_DIR/$f exists and was not written by this script; refusing to overwrite a real cluster's config (set LOSS_SLOPE_SLURM_FORCE=1 to override)"
            cp -a "$CONF_DIR/$f" "$CONF_DIR/$f.before-loss-slope"
            log "backed up $CONF_DIR/$f to $f.before-loss-slope"
        fi
    done
}

make_fake_gpus() {
    local i
    mkdir -p "$DATA/dev"
    for ((i = 0; i < NGPUS; i++)); do
        # one distinct char device per GPU (same numbers as /dev/null); Slurm only
        # needs a device file per GRES unit to hand out indices and set
        # CUDA_VISIBLE_DEVICES.
        [ -c "$DATA/dev/fakegpu$i" ] || mknod "$DATA/dev/fakegpu$i" c 1 3
    done
}

render_slurm_conf() {
    cat <<EOF
$MARK
# One node, fake GPUs, no cgroups, no systemd. See tests/slurm/cluster.sh.
ClusterName=$CLUSTER
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
MailProg=/bin/true
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$DATA/slurmctld
SlurmdSpoolDir=$DATA/slurmd
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/affinity
SwitchType=switch/none
SchedulerType=sched/backfill
# without these, a job whose --begin time passed waits for the next periodic
# pass (sched_interval=60 s by default): measured 38 s extra on a retry
SchedulerParameters=sched_interval=5,bf_interval=5
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$DEF_MEM_PER_CPU
GresTypes=gpu
# lets the node advertise more CPUs/memory than the machine has
SlurmdParameters=config_overrides
ReturnToService=2
# completed jobs stay visible to squeue/scontrol this long (sacct is the
# status source, this is only for humans)
MinJobAge=300
KillWait=10
InactiveLimit=0
SlurmctldTimeout=60
SlurmdTimeout=120
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=6819
AccountingStorageEnforce=associations
AccountingStorageTRES=gres/gpu
# store sbatch --comment (the plugin puts "rule_<rule>_wildcards_<wc>" there)
AccountingStoreFlags=job_comment
JobCompType=jobcomp/none
NodeName=$NODE NodeHostname=$NODE NodeAddr=127.0.0.1 CPUs=$NCPUS Boards=1 SocketsPerBoard=1 CoresPerSocket=$NCPUS ThreadsPerCore=1 RealMemory=$MEM_MB Gres=gpu:$GPU_TYPE:$NGPUS State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
# a CPU partition on the same node, for the Snakemake controller as a job
PartitionName=$CPU_PARTITION Nodes=$NODE Default=NO MaxTime=INFINITE State=UP
EOF
}

render_gres_conf() {
    local i
    echo "$MARK"
    for ((i = 0; i < NGPUS; i++)); do
        echo "NodeName=$NODE Name=gpu Type=$GPU_TYPE File=$DATA/dev/fakegpu$i"
    done
}

render_slurmdbd_conf() {
    cat <<EOF
$MARK
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=root
DebugLevel=info
LogFile=$LOGS/slurmdbd.log
PidFile=$STATE/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=$DB_USER
StoragePass=$DB_PASS
StorageLoc=$DB_NAME
EOF
}

# -------------------------------------------------------------- daemons
wait_for() { # seconds description command...
    local secs=$1 what=$2; shift 2
    local end=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        if [ $SECONDS -ge $end ]; then log "timed out after ${secs}s waiting for $what"; return 1; fi
        sleep 0.5
    done
}

munge_ok() { t 5 munge -n 2>/dev/null | t 5 unmunge >/dev/null 2>&1; }

start_munge() {
    if munge_ok; then
        we_started munged || log "munged already running (not started by us; reusing it)"
        return 0
    fi
    install -d -o munge -g munge -m 0755 /run/munge
    install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge
    if [ ! -s /etc/munge/munge.key ]; then
        log "creating /etc/munge/munge.key"
        setpriv --reuid=munge --regid=munge --init-groups mungekey --create --keyfile=/etc/munge/munge.key
    fi
    log "starting munged"
    # munged forks itself and writes its pid file
    setpriv --reuid=munge --regid=munge --init-groups timeout -k 5 20 /usr/sbin/munged --pid-file=/run/munge/munged.pid </dev/null >/dev/null 2>&1 9>&- \
        || die "munged failed to start (see /var/log/munge/munged.log)"
    record_started munged
    wait_for 20 munged munge_ok || die "munged does not answer"
}

# shellcheck disable=SC2120  # called with arguments through wait_for
db_admin() { t 20 mariadb --no-defaults --protocol=socket --socket="$MYSQL_SOCK" -u root "$@"; }

start_mariadb() {
    install -d -o mysql -g mysql -m 0755 "$MYSQL_RUN"
    if pid_of mariadb >/dev/null; then return 0; fi
    if [ ! -d "$MYSQL_DIR/mysql" ]; then
        log "initialising private mariadb datadir $MYSQL_DIR"
        install -d -o mysql -g mysql -m 0750 "$MYSQL_DIR"
        t 120 mariadb-install-db --no-defaults --user=mysql --datadir="$MYSQL_DIR" \
            --auth-root-authentication-method=socket --skip-test-db >"$LOGS/mariadb-install.log" 2>&1 \
            || die "mariadb-install-db failed (log: $LOGS/mariadb-install.log)"
    fi
    log "starting private mariadb on 127.0.0.1:$DB_PORT"
    setsid /usr/sbin/mariadbd --no-defaults --user=mysql --datadir="$MYSQL_DIR" \
        --socket="$MYSQL_SOCK" --pid-file="$MYSQL_RUN/mariadb.pid" \
        --port="$DB_PORT" --bind-address=127.0.0.1 --skip-name-resolve \
        --log-error="$LOGS/mariadb.log" --skip-log-bin --performance-schema=OFF \
        --innodb-buffer-pool-size=64M --innodb-log-file-size=16M \
        --innodb-lock-wait-timeout=900 --max-connections=50 \
        </dev/null >/dev/null 2>&1 9>&- &
    record_started mariadb
    wait_for 60 mariadb db_admin -e 'SELECT 1' || die "mariadb did not come up (log: $LOGS/mariadb.log)"
    db_admin <<EOF || die "could not create the accounting database user"
CREATE DATABASE IF NOT EXISTS \`$DB_NAME\`;
CREATE USER IF NOT EXISTS '$DB_USER'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON \`$DB_NAME\`.* TO '$DB_USER'@'127.0.0.1';
GRANT ALL ON \`$DB_NAME\`.* TO '$DB_USER'@'localhost';
EOF
}

start_slurm_daemon() { # name cmd...
    local name=$1; shift
    if pid_of "$name" >/dev/null; then return 0; fi
    log "starting $name"
    # the slurm daemons fork themselves and write their PidFile
    t 60 "$@" </dev/null >>"$LOGS/$name.stdout" 2>&1 9>&- || die "$name failed to start (log: $LOGS/$name.log)"
    record_started "$name"
    wait_for 20 "$name pid file" pid_of "$name" || die "$name exited right after start (log: $LOGS/$name.log)"
}

sacctmgr_q() { t 20 sacctmgr -i -n -P "$@"; }

setup_accounting() {
    # idempotent: cluster, account, root as a member of the account
    sacctmgr_q list cluster format=cluster | grep -qx "$CLUSTER" \
        || sacctmgr_q add cluster "$CLUSTER" >/dev/null
    sacctmgr_q list account "$ACCOUNT" format=account | grep -qx "$ACCOUNT" \
        || sacctmgr_q add account "$ACCOUNT" Cluster="$CLUSTER" Description="loss-slope tests" Organization=loss-slope >/dev/null
    sacctmgr_q list assoc user=root account="$ACCOUNT" cluster="$CLUSTER" format=account | grep -qx "$ACCOUNT" \
        || sacctmgr_q add user root Account="$ACCOUNT" Cluster="$CLUSTER" >/dev/null
    sacctmgr_q list user root format=defaultaccount | grep -qx "$ACCOUNT" \
        || sacctmgr_q modify user root set DefaultAccount="$ACCOUNT" >/dev/null
}

node_state() { t 10 sinfo -h -N -n "$NODE" -o %T 2>/dev/null | head -n 1; }
node_usable() { case "$(node_state)" in idle | mixed | allocated | completing) return 0 ;; *) return 1 ;; esac; }
node_idle() { [ "$(node_state)" = idle ]; }
ctld_ok() { t 10 scontrol ping 2>/dev/null | grep -q 'is UP'; }

all_running() {
    pid_of mariadb >/dev/null && pid_of slurmdbd >/dev/null &&
        pid_of slurmctld >/dev/null && pid_of slurmd >/dev/null &&
        munge_ok && ctld_ok && node_usable
}

write_env() {
    cat >"$STATE/env" <<EOF
export LOSS_SLOPE_SLURM_PARTITION=$PARTITION
export LOSS_SLOPE_SLURM_CPU_PARTITION=$CPU_PARTITION
export LOSS_SLOPE_SLURM_ACCOUNT=$ACCOUNT
export LOSS_SLOPE_SLURM_GPU_MODEL=$GPU_TYPE
export LOSS_SLOPE_SLURM_GPUS=$NGPUS
export LOSS_SLOPE_SLURM_CPUS=$NCPUS
export LOSS_SLOPE_SLURM_MEM_MB=$MEM_MB
export LOSS_SLOPE_SLURM_NODE=$NODE
export LOSS_SLOPE_SLURM_CLUSTER=$CLUSTER
export LOSS_SLOPE_SLURM_LOGS=$LOGS
EOF
}

cmd_up() {
    need_root
    install -d -m 0755 "$STATE" "$DATA" "$LOGS"
    exec 9>"$STATE/lock"
    flock -w "$APT_TIMEOUT" 9 || die "another cluster.sh holds $STATE/lock"
    local t0=$SECONDS
    install_packages
    check_conf_ours
    make_fake_gpus
    install -d -m 0755 "$CONF_DIR" "$DATA/slurmctld" "$DATA/slurmd"
    local changed=0
    write_if_changed "$CONF_DIR/slurm.conf" 0644 "$(render_slurm_conf)" && changed=1
    write_if_changed "$CONF_DIR/gres.conf" 0644 "$(render_gres_conf)" && changed=1
    write_if_changed "$CONF_DIR/slurmdbd.conf" 0600 "$(render_slurmdbd_conf)" && changed=2
    if [ $changed = 0 ] && all_running; then
        write_env
        log "already up (node $NODE $(node_state)); nothing to do"
        return 0
    fi
    if [ $changed != 0 ] && pid_of slurmctld >/dev/null; then
        log "configuration changed: restarting the slurm daemons"
        stop_one slurmd
        stop_one slurmctld
        if [ $changed = 2 ]; then stop_one slurmdbd; fi
    fi
    start_munge
    start_mariadb
    start_slurm_daemon slurmdbd /usr/sbin/slurmdbd
    wait_for 30 "slurmdbd" sacctmgr_q list cluster || die "slurmdbd does not answer (log: $LOGS/slurmdbd.log)"
    setup_accounting
    start_slurm_daemon slurmctld /usr/sbin/slurmctld
    wait_for 30 "slurmctld" ctld_ok || die "slurmctld does not answer (log: $LOGS/slurmctld.log)"
    # -b: report the node as just booted, so ReturnToService can clear an old DOWN
    start_slurm_daemon slurmd /usr/sbin/slurmd -b
    if ! wait_for "$UP_TIMEOUT" "node $NODE to become usable" node_usable; then
        t 10 scontrol show node "$NODE" >&2 || true
        tail -n 20 "$LOGS/slurmd.log" "$LOGS/slurmctld.log" >&2 || true
        die "node did not become usable"
    fi
    write_env
    log "up after $((SECONDS - t0))s: node $NODE $(node_state), partition $PARTITION, account $ACCOUNT, gpus $NGPUS x $GPU_TYPE"
}

stop_one() { # name: only if we started it (pid_of also checks /proc/PID/comm)
    local name=$1 pid
    if ! pid=$(pid_of "$name"); then
        [ -f "$STATE/started" ] && sed -i "/^$name\$/d" "$STATE/started"
        return 0
    fi
    if ! we_started "$name"; then log "$name (pid $pid) was not started by us; leaving it"; return 0; fi
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    local end=$((SECONDS + 30))
    while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $end ]; do sleep 0.3; done
    if kill -0 "$pid" 2>/dev/null; then log "$name did not stop in 30 s; SIGKILL"; kill -KILL "$pid" 2>/dev/null || true; fi
    sed -i "/^$name\$/d" "$STATE/started"
}

live_leases() { # lease files are named by the pid of a process using the cluster
    local f n=0
    for f in "$STATE"/leases/*; do
        [ -e "$f" ] || continue
        if kill -0 "$(basename "$f")" 2>/dev/null; then n=$((n + 1)); else rm -f "$f"; fi
    done
    echo $n
}

cmd_down() {
    need_root
    local if_unused=0 purge=0 a
    for a in "$@"; do
        case $a in
        --if-unused) if_unused=1 ;;
        --purge) purge=1 ;;
        *) die "unknown option $a" ;;
        esac
    done
    [ -d "$STATE" ] || { log "nothing to stop"; return 0; }
    exec 9>"$STATE/lock"
    flock -w 60 9 || die "another cluster.sh holds $STATE/lock"
    if [ $if_unused = 1 ] && [ "$(live_leases)" -gt 0 ]; then
        log "still in use ($(live_leases) live lease(s) in $STATE/leases); leaving it up"
        return 0
    fi
    if we_started slurmctld && ctld_ok; then
        local jobs
        jobs=$(t 10 squeue -h -p "$PARTITION" -o %i 2>/dev/null | tr '\n' ' ')
        if [ -n "${jobs// /}" ]; then
            log "cancelling jobs still in partition $PARTITION: $jobs"
            # shellcheck disable=SC2086
            t 20 scancel $jobs || true
            wait_for 40 "jobs to leave the queue" bash -c "[ -z \"\$(timeout 10 squeue -h -p $PARTITION -o %i)\" ]" || true
        fi
    fi
    local name
    for name in slurmd slurmctld slurmdbd mariadb munged; do stop_one "$name"; done
    if [ $purge = 1 ]; then
        log "purging $DATA, $LOGS and our config files in $CONF_DIR"
        local f
        for f in slurm.conf gres.conf slurmdbd.conf; do
            if [ -f "$CONF_DIR/$f" ] && head -n 1 "$CONF_DIR/$f" | grep -qF "managed-by: loss-slope"; then rm -f "$CONF_DIR/$f"; fi
        done
        rm -rf "$DATA" "$LOGS"
        rm -rf "$STATE"
    fi
    log "down"
}

cmd_status() {
    local rc=0 name pid
    for name in munged mariadb slurmdbd slurmctld slurmd; do
        if pid=$(pid_of "$name"); then
            printf '%-10s running pid %-7s %s\n' "$name" "$pid" "$(we_started "$name" && echo '(started by cluster.sh)' || echo '(not ours)')"
        elif [ $name = munged ] && munge_ok; then
            printf '%-10s answers on the default socket (not ours)\n' "$name"
        else
            printf '%-10s not running\n' "$name"
            rc=3
        fi
    done
    if ctld_ok; then
        t 10 sinfo -N -o '%N %P %T %c %m %G' || true
        echo "jobs in queue: $(t 10 squeue -h | wc -l)"
        node_usable || rc=3
    else
        echo "slurmctld: not answering"
        rc=3
    fi
    return $rc
}

cmd_wait_idle() {
    local secs=${1:-300}
    wait_for "$secs" "an empty queue and idle node" bash -c \
        "[ -z \"\$(timeout 10 squeue -h -o %i)\" ] && [ \"\$(timeout 10 sinfo -h -N -n $NODE -o %T | head -n1)\" = idle ]" \
        || { t 10 squeue >&2 || true; exit 1; }
}

cmd_env() {
    if [ -f "$STATE/env" ]; then cat "$STATE/env"; else
        # not up yet: print what `up` would use
        STATE=$(mktemp -d)
        write_env
        cat "$STATE/env"
        rm -rf "$STATE"
    fi
}

main() {
    local cmd=${1:-}
    shift || true
    case $cmd in
    up)
        local a
        for a in "$@"; do
            case $a in
            --no-install) NO_INSTALL=1 ;;
            *) die "unknown option $a" ;;
            esac
        done
        cmd_up
        ;;
    down) cmd_down "$@" ;;
    status) cmd_status ;;
    wait-idle) cmd_wait_idle "$@" ;;
    env) cmd_env ;;
    *)
        sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
        exit 2
        ;;
    esac
}

main "$@"
