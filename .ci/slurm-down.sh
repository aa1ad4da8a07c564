#!/usr/bin/env bash
# Stop the CI cluster started by .ci/slurm-up.sh: slurmd (every node), slurmctld, slurmdbd, MariaDB,
# munged -- each by the pid in its pid file, nothing else. State (jobs, accounting) is kept; pass
# --purge to also wipe slurmctld's state and the slurmd spool (job ids then restart at 1).
set -euo pipefail
RUN_DIR=/run/slurm
log() { echo "[slurm-down] $*" >&2; }
# pid_live PID: exists and is not a zombie (PID 1 here may reap orphans late; kill -0 succeeds on zombies)
pid_live() {
    local st
    st=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || return 1
    [[ -n $st && $st != Z && $st != X ]]
}

# stop NAME PIDFILE...: TERM every live NAME process named in the pid files, wait up to 15 s, KILL
stop() {
    local name=$1 f pid i; shift
    local pids=()
    for f in "$@"; do
        [[ -r $f ]] || continue
        pid=$(tr -dc 0-9 < "$f")
        if [[ -n $pid ]] && pid_live "$pid" && [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$name" ]]; then
            log "stopping $name ($pid)"; kill -TERM "$pid" 2>/dev/null || true; pids+=("$pid")
        fi
    done
    for i in $(seq 150); do
        local left=0
        for pid in "${pids[@]}"; do pid_live "$pid" && left=1; done
        [[ $left -eq 0 ]] && break
        sleep 0.1
    done
    for pid in "${pids[@]}"; do
        pid_live "$pid" && { log "$name ($pid) ignored TERM: KILL"; kill -KILL "$pid" 2>/dev/null || true; }
    done
    rm -f "$@"
}

shopt -s nullglob
stop slurmd "$RUN_DIR"/slurmd-*.pid
stop slurmctld "$RUN_DIR/slurmctld.pid"     # before slurmdbd: it flushes accounting on the way out
stop slurmdbd "$RUN_DIR/slurmdbd.pid"
stop mariadbd /run/mysqld/mysqld.pid
stop munged /run/munge/munged.pid
rm -f "$RUN_DIR/dcssl-conf.sha256"
if [[ ${1:-} == --purge ]]; then
    log "wiping /var/spool/slurmctld and /var/spool/slurmd"
    rm -rf /var/spool/slurmctld/* /var/spool/slurmd/*
fi
log "stopped"
