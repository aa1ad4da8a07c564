#!/usr/bin/env bash
# Bring up (or check) a live single-machine SLURM cluster for the integration tests.
#
#   munged + MariaDB + slurmdbd + slurmctld + one slurmd per emulated node
#   nodes: <hostname -s> plus vnode1..vnodeN (extra `slurmd -N vnodeX` on their own ports),
#   all in partition `debug` (Default=YES), each advertising CPUs=8.
#
# Idempotent: a re-run on a healthy cluster only checks (< 1 s); dead daemons are restarted; a
# changed config restarts slurmctld and the slurmds (AuthInfo is not applied by `scontrol reconfigure`).
# Exits 0 once `sinfo` shows every node up (idle, or busy with jobs), non-zero with a message otherwise.
#
# Environment knobs (defaults in brackets):
#   DCSSL_SLURM_VNODES   number of extra emulated nodes            [2]
#   DCSSL_SLURM_CPUS     CPUs advertised per node                  [8]
#   DCSSL_SLURM_MEM_MB   RealMemory per node (MB)                  [4000]
#   DCSSL_SLURM_TIMEOUT  seconds to wait for the nodes             [120]
#   DCSSL_SLURM_LOGDIR   daemon logs                               [/var/log/dcssl-slurm]
# Must run as root (writes /etc/slurm, /etc/hosts, starts daemons). Debian/Ubuntu (apt) only.
set -euo pipefail

VNODES=${DCSSL_SLURM_VNODES:-2}
CPUS=${DCSSL_SLURM_CPUS:-8}
MEM_MB=${DCSSL_SLURM_MEM_MB:-4000}
TIMEOUT=${DCSSL_SLURM_TIMEOUT:-120}
LOGDIR=${DCSSL_SLURM_LOGDIR:-/var/log/dcssl-slurm}
CLUSTER=dcssl
PARTITION=debug
DB_PASS=dcssl-ci-only
CONF_DIR=/etc/slurm
RUN_DIR=/run/slurm
STATE_DIR=/var/spool/slurmctld
HASH_FILE=$RUN_DIR/dcssl-conf.sha256   # hash of the config the running daemons were started with

log() { echo "[slurm-up] $*" >&2; }
die() { echo "[slurm-up] ERROR: $*" >&2; exit 1; }
# die_log LOGFILE MESSAGE: die, showing the end of the daemon's log
die_log() {
    local f=$1; shift
    if [[ -r $f ]]; then echo "[slurm-up] --- last lines of $f:" >&2; tail -n 20 "$f" >&2; fi
    die "$*"
}

[[ $(id -u) -eq 0 ]] || die "must run as root (it writes /etc/slurm and starts daemons)"

HOST=$(hostname -s)
NODES=("$HOST")
for i in $(seq 1 "$VNODES"); do NODES+=("vnode$i"); done

# ---------------------------------------------------------------- packages
PKGS=(munge slurmctld slurmd slurm-client slurmdbd mariadb-server)
BINS=(munged mungekey slurmctld slurmd sbatch slurmdbd mariadbd mariadb-admin)
missing_bins() { local b; for b in "${BINS[@]}"; do PATH=$PATH:/usr/sbin:/sbin command -v "$b" >/dev/null || echo "$b"; done; }
if [[ -n "$(missing_bins)" ]]; then
    command -v apt-get >/dev/null || die "missing $(missing_bins | tr '\n' ' ')and no apt-get to install them"
    log "installing ${PKGS[*]}"
    created_policy=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then   # keep package scripts from starting stock daemons
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; created_policy=1
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt_install() { apt-get install -y -q "${PKGS[@]}" >>"/tmp/dcssl-slurm-apt.log" 2>&1; }
    if ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null || ! apt_install; then
        log "apt-get update (package lists missing or stale)"
        apt-get update -q >>"/tmp/dcssl-slurm-apt.log" 2>&1 || die "apt-get update failed, see /tmp/dcssl-slurm-apt.log"
        apt_install || die "apt-get install failed, see /tmp/dcssl-slurm-apt.log"
    fi
    if [[ $created_policy -eq 1 ]]; then rm -f /usr/sbin/policy-rc.d; trap - EXIT; fi
    [[ -z "$(missing_bins)" ]] || die "still missing after install: $(missing_bins | tr '\n' ' ')"
fi
export PATH=$PATH:/usr/sbin:/sbin

mkdir -p "$LOGDIR" "$RUN_DIR" "$STATE_DIR" "$CONF_DIR"
for n in "${NODES[@]}"; do mkdir -p "/var/spool/slurmd/$n"; done

# ---------------------------------------------------------------- config
# /etc/hosts: the emulated node names must resolve (MASTER_ADDR = first host of the job's nodelist).
for n in "${NODES[@]}"; do
    grep -qE "^[^#]*[[:space:]]$n([[:space:]]|\$)" /etc/hosts || echo "127.0.0.1 $n" >> /etc/hosts
done

slurm_conf() {
    cat <<EOF
# Written by .ci/slurm-up.sh (dcssl) -- a single-machine CI cluster. Edits are overwritten.
ClusterName=$CLUSTER
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=6817
SlurmdPort=6818
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# short credential lifetime: else a requeued job waits ~121 s before it may start again
AuthInfo=cred_expire=10
CredType=cred/munge
StateSaveLocation=$STATE_DIR
SlurmdSpoolDir=/var/spool/slurmd/%n
SlurmctldPidFile=$RUN_DIR/slurmctld.pid
SlurmdPidFile=$RUN_DIR/slurmd-%n.pid
SlurmctldLogFile=$LOGDIR/slurmctld.log
SlurmdLogFile=$LOGDIR/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
SelectType=select/cons_tres
# CR_CPU: memory is not a consumable (CR_*_Memory would need DefMemPerCPU, else one job takes a node)
SelectTypeParameters=CR_CPU
# react within seconds (default waits ~60 s for requeued / begin-time jobs)
SchedulerParameters=batch_sched_delay=0,sched_interval=2
# let a small machine advertise CPUs=$CPUS per node
SlurmdParameters=config_overrides
KillWait=5
ReturnToService=2
InactiveLimit=0
MinJobAge=300
SlurmdTimeout=120
SlurmctldTimeout=60
MailProg=/bin/true
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
EOF
    # vnode slurmd ports sit right above slurmdbd's 6819: well away from the job rendezvous ports
    # (hpc.env.default_port: 15000-34999), which a node's slurmd port must never collide with.
    local port=6830 i=0 n
    for n in "${NODES[@]}"; do
        if [[ $n == "$HOST" ]]; then
            echo "NodeName=$n NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN"
        else
            i=$((i + 1))
            echo "NodeName=$n NodeHostname=$HOST NodeAddr=127.0.0.1 Port=$((port + i)) CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN"
        fi
    done
    local all; all=$(IFS=,; echo "${NODES[*]}")
    echo "PartitionName=$PARTITION Nodes=$all Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO"
}

slurmdbd_conf() {
    cat <<EOF
# Written by .ci/slurm-up.sh (dcssl). Edits are overwritten.
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=root
DebugLevel=info
LogFile=$LOGDIR/slurmdbd.log
PidFile=$RUN_DIR/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
}

# write_if_changed FILE MODE < content  -> returns 0 if the file changed
write_if_changed() {
    local f=$1 mode=$2 tmp
    tmp=$(mktemp "$f.XXXXXX")
    cat > "$tmp"; chmod "$mode" "$tmp"
    if [[ -f $f ]] && cmp -s "$tmp" "$f" && [[ $(stat -c %a "$f") == "$mode" ]]; then rm -f "$tmp"; return 1; fi
    mv -f "$tmp" "$f"; return 0
}
# Never clobber a real site's config: only overwrite a slurm.conf this script wrote (or under CI).
MARK="# Written by .ci/slurm-up.sh (dcssl)"
if [[ -s $CONF_DIR/slurm.conf ]] && ! head -n1 "$CONF_DIR/slurm.conf" | grep -qF "$MARK" \
        && [[ ${CI:-} != true && ${DCSSL_SLURM_FORCE:-} != 1 ]]; then
    die "$CONF_DIR/slurm.conf was not written by this script; refusing to replace it (set CI=true or DCSSL_SLURM_FORCE=1 to override)"
fi
slurm_conf   | write_if_changed "$CONF_DIR/slurm.conf" 644 && log "wrote $CONF_DIR/slurm.conf" || true
slurmdbd_conf | write_if_changed "$CONF_DIR/slurmdbd.conf" 600 && log "wrote $CONF_DIR/slurmdbd.conf" || true
CONF_HASH=$(cat "$CONF_DIR/slurm.conf" "$CONF_DIR/slurmdbd.conf" | sha256sum | cut -d' ' -f1)

# ---------------------------------------------------------------- process helpers
# alive PIDFILE NAME: the pid in PIDFILE is a live process whose command name is NAME
alive() {
    local pid
    [[ -r $1 ]] || return 1
    pid=$(tr -dc 0-9 < "$1")
    [[ -n $pid ]] && pid_live "$pid" && [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$2" ]]
}
# pid_live PID: exists and is not a zombie (PID 1 here may reap orphans late; kill -0 succeeds on zombies)
pid_live() {
    local st
    st=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || return 1
    [[ -n $st && $st != Z && $st != X ]]
}
# stop_pid PIDFILE NAME: TERM, wait up to 10 s, then KILL -- only the process named in the pid file
stop_pid() {
    local pid i
    alive "$1" "$2" || { rm -f "$1"; return 0; }
    pid=$(tr -dc 0-9 < "$1")
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 150); do pid_live "$pid" || break; sleep 0.1; done
    pid_live "$pid" && kill -KILL "$pid" 2>/dev/null || true
    rm -f "$1"
}
# wait_for DESCRIPTION SECONDS CMD...: poll CMD every 0.2 s
wait_for() {
    local what=$1 secs=$2 end; shift 2
    end=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < end)) || return 1
        sleep 0.2
    done
}
# Detach daemons from the caller (pytest captures our stdout: an inherited pipe would block it).
spawn() { local logf=$1; shift; setsid "$@" </dev/null >>"$logf" 2>&1 & }

# ---------------------------------------------------------------- munge
MUNGE_PID=/run/munge/munged.pid
if ! alive "$MUNGE_PID" munged; then
    log "starting munged"
    [[ -s /etc/munge/munge.key ]] || { install -d -o munge -g munge -m 700 /etc/munge; mungekey -c -f -k /etc/munge/munge.key; }
    chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key
    install -d -o munge -g munge -m 755 /run/munge
    install -d -o munge -g munge -m 700 /var/lib/munge /var/log/munge
    rm -f /run/munge/munge.socket.2.lock
    runuser -u munge -- munged --force </dev/null >>"$LOGDIR/munged.log" 2>&1 || die "munged failed to start, see $LOGDIR/munged.log"
    wait_for munge 10 bash -c 'munge -n | unmunge' || die "munge does not answer, see $LOGDIR/munged.log"
fi

# ---------------------------------------------------------------- MariaDB
MYSQL_PID=/run/mysqld/mysqld.pid
db_up() { mariadb-admin --protocol=socket -uroot ping; }
if ! alive "$MYSQL_PID" mariadbd || ! db_up >/dev/null 2>&1; then
    log "starting mariadbd"
    install -d -o mysql -g mysql -m 755 /run/mysqld
    if [[ ! -d /var/lib/mysql/mysql ]]; then
        mariadb-install-db --user=mysql --datadir=/var/lib/mysql >>"$LOGDIR/mariadb.log" 2>&1 \
            || die "mariadb-install-db failed, see $LOGDIR/mariadb.log"
    fi
    spawn "$LOGDIR/mariadb.log" mariadbd --user=mysql --bind-address=127.0.0.1
    wait_for mariadb 60 db_up || die_log "$LOGDIR/mariadb.log" "MariaDB did not come up in 60 s"
fi
if ! mariadb -uroot -N -e "SELECT 1 FROM mysql.user WHERE user='slurm' AND host='localhost'" 2>/dev/null | grep -q 1; then
    log "creating the slurm database user"
    mariadb -uroot <<EOF || die "could not create the slurm DB user"
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
FLUSH PRIVILEGES;
EOF
fi

# ---------------------------------------------------------------- config change => restart slurm daemons
RESTART=0
if [[ -f $HASH_FILE && $(cat "$HASH_FILE") != "$CONF_HASH" ]]; then
    log "config changed since the daemons started: restarting slurmdbd, slurmctld and slurmd"
    RESTART=1
fi
if [[ $RESTART -eq 1 ]]; then
    for f in "$RUN_DIR"/slurmd-*.pid; do [[ -e $f ]] && stop_pid "$f" slurmd; done
    stop_pid "$RUN_DIR/slurmctld.pid" slurmctld
    stop_pid "$RUN_DIR/slurmdbd.pid" slurmdbd
fi

# ---------------------------------------------------------------- slurmdbd + cluster registration
dbd_up() { sacctmgr -n -P list cluster format=cluster; }
if ! alive "$RUN_DIR/slurmdbd.pid" slurmdbd; then
    log "starting slurmdbd"
    spawn "$LOGDIR/slurmdbd.out" slurmdbd -D
    wait_for slurmdbd 60 dbd_up || die_log "$LOGDIR/slurmdbd.out" "slurmdbd does not answer in 60 s, see $LOGDIR/slurmdbd.log"
fi
if ! dbd_up 2>/dev/null | grep -qx "$CLUSTER"; then
    log "registering cluster $CLUSTER in slurmdbd"
    sacctmgr -i add cluster "$CLUSTER" >/dev/null || die "sacctmgr add cluster $CLUSTER failed"
fi

# ---------------------------------------------------------------- slurmctld
if ! alive "$RUN_DIR/slurmctld.pid" slurmctld; then
    log "starting slurmctld"
    spawn "$LOGDIR/slurmctld.out" slurmctld -D
    wait_for slurmctld 60 scontrol ping || die_log "$LOGDIR/slurmctld.out" "slurmctld does not answer in 60 s, see $LOGDIR/slurmctld.log"
fi

# ---------------------------------------------------------------- slurmd, one per node
# start_slurmd NODE: a slurmd for NODE, after stopping any stray one (a slurmd whose pid file is
# gone or stale still holds the node's port, and a second one would exit at once on it)
start_slurmd() {
    local stray
    for stray in $(pgrep -x slurmd 2>/dev/null); do
        if tr '\0' ' ' < "/proc/$stray/cmdline" 2>/dev/null | grep -qE -- "-N $1( |\$)"; then
            log "stopping stray slurmd $stray for node $1"
            kill -KILL "$stray" 2>/dev/null || true
            wait_for "stray slurmd $stray" 10 bash -c "! kill -0 $stray" || true
        fi
    done
    log "starting slurmd for node $1"
    spawn "$LOGDIR/slurmd-$1.out" slurmd -D -N "$1"
}
for n in "${NODES[@]}"; do
    alive "$RUN_DIR/slurmd-$n.pid" slurmd || start_slurmd "$n"
done
echo "$CONF_HASH" > "$HASH_FILE"

# ---------------------------------------------------------------- wait for the nodes
# Ready = every node is idle, or busy running jobs (mixed/allocated/completing) -- a re-run while
# tests run must not wait for their jobs. unknown/down/drained/not responding (*) is not ready.
not_ready() {
    local out
    out=$(sinfo -h -N -p "$PARTITION" -o '%N %t' 2>/dev/null) || { echo "sinfo failed"; return; }
    local n st
    for n in "${NODES[@]}"; do
        st=$(awk -v n="$n" '$1 == n {print $2; exit}' <<<"$out")
        case $st in
            idle|mix|alloc|comp) ;;
            *) echo "$n:${st:-missing}" ;;
        esac
    done
}
end=$((SECONDS + TIMEOUT)); resumed=0; restarted=""
while :; do
    bad=$(not_ready)
    [[ -z $bad ]] && break
    # a node left down/drained by an earlier run (e.g. slurmd killed) is handed back once its slurmd is up
    if [[ $resumed -eq 0 ]] && grep -qE ':(down|drain|drng|fail|failg)$' <<<"$bad" && ((SECONDS > end - TIMEOUT + 5)); then
        for nb in $(grep -oE '^[^:]+:(down|drain|drng|fail|failg)$' <<<"$bad" | cut -d: -f1); do
            log "resuming node $nb"
            scontrol update nodename="$nb" state=resume >/dev/null 2>&1 || true
        done
        resumed=1
    fi
    # a daemon that died while we wait will not come back by waiting
    alive "$RUN_DIR/slurmctld.pid" slurmctld || die_log "$LOGDIR/slurmctld.out" "slurmctld exited, see $LOGDIR/slurmctld.log"
    sleep 0.3   # give a crashing slurmd time to write its pid file and die
    # one more start for a slurmd that exited (a port still in its predecessor's hands), then give up
    for n in "${NODES[@]}"; do
        alive "$RUN_DIR/slurmd-$n.pid" slurmd && continue
        [[ " $restarted " == *" $n "* ]] && die_log "$LOGDIR/slurmd-$n.out" "slurmd for node $n exited twice, see $LOGDIR/slurmd-$n.log"
        restarted+=" $n"
        log "slurmd for node $n exited; starting it once more"
        sleep 1
        start_slurmd "$n"
    done
    if ((SECONDS >= end)); then
        sinfo -N -p "$PARTITION" -l >&2 || true
        die "nodes not ready after ${TIMEOUT}s: $(echo $bad). Logs: $LOGDIR/ (slurmctld.log, slurmd-<node>.log)"
    fi
    sleep 0.2
done
log "cluster $CLUSTER up: partition $PARTITION, nodes ${NODES[*]} ($(sinfo -h -p "$PARTITION" -o %t | sort -u | paste -sd,)) in ${SECONDS}s"
