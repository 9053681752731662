#!/usr/bin/env bash
# A real single-host Slurm cluster of two emulated nodes (node1, node2, partition `debug`), for
# testing slurm/train.sbatch and slurm/chain.sh without a cluster. Everything (config, munge key
# and socket, state, spool, logs, pid files) lives under one folder; nothing is registered with
# the system. Needs root (Debian/Ubuntu: installs slurmctld slurmd slurm-client munge with
# apt-get if missing) and adds `127.0.0.1 node1 node2` to /etc/hosts if those names do not
# resolve: meant for a throwaway CI or test machine.
#
#   scripts/slurm_local_cluster.sh start [DIR]   # prints: export SLURM_CONF=DIR/slurm.conf
#   eval "$(scripts/slurm_local_cluster.sh start)"; sinfo; sbatch -p debug ...
#   scripts/slurm_local_cluster.sh stop [DIR]    # cancels its jobs, kills its daemons, rm -r DIR
#   scripts/slurm_local_cluster.sh status [DIR]
#
# DIR defaults to $SLURM_LOCAL_DIR or /tmp/scalekd-slurm; every directory above it must be
# searchable by all users (munged insists), so keep it directly under /tmp. `start` is
# idempotent: a cluster already up in DIR is left as it is. SLURM_LOCAL_PORT (default 6817) is
# slurmctld's port; the nodes' slurmd use the next two. CPUs per node: SLURM_LOCAL_CPUS
# (default 4: two single-task jobs, or a 2-task step, fit on each node whatever the real core
# count; Slurm is told not to check it).
set -euo pipefail

cmd=${1:-start}
DIR=${2:-${SLURM_LOCAL_DIR:-/tmp/scalekd-slurm}}
PORT=${SLURM_LOCAL_PORT:-6817}
CPUS=${SLURM_LOCAL_CPUS:-4}
NODES=(node1 node2)
CONF=$DIR/slurm.conf
MARK="SCALEKD_SLURM_LOCAL=$DIR"  # in the environment of every daemon (and slurmstepd) we start

log() { echo "slurm_local_cluster: $*" >&2; }

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

live() {  # process $1 exists and is not a zombie (an unreaped zombie does not count)
  local state
  state=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || return 1
  [ -n "$state" ] && [ "$state" != Z ]
}

# This script and its ancestors: never killed, whatever their environment or folder.
ancestors() {
  local p=$$
  while [ -n "$p" ] && [ "$p" -gt 1 ]; do
    echo "$p"
    p=$(awk '{print $4}' "/proc/$p/stat" 2>/dev/null) || break
  done
}

# Processes of this cluster: the daemons (started with $MARK in their environment), slurmstepd
# (Slurm empties its environment, but it works in DIR, where the daemons chdir), and job
# processes (SLURM_CONF=$CONF and a SLURM_JOB_ID in their environment) that outlived their step.
cluster_procs() {
  local skip p f cwd
  skip=" $(ancestors | tr '\n' ' ') "
  {
    for f in $(grep -lzxF -- "$MARK" /proc/[0-9]*/environ 2>/dev/null); do
      p=${f#/proc/}; echo "${p%/environ}"
    done
    for f in $(grep -lzxF -- "SLURM_CONF=$CONF" /proc/[0-9]*/environ 2>/dev/null); do
      grep -qz '^SLURM_JOB_ID=' "$f" 2>/dev/null && { p=${f#/proc/}; echo "${p%/environ}"; }
    done
    for f in /proc/[0-9]*/cwd; do
      cwd=$(readlink "$f" 2>/dev/null) || continue
      case "$cwd" in "$DIR"|"$DIR"/*) p=${f#/proc/}; echo "${p%/cwd}" ;; esac
    done
  } | sort -un | while read -r p; do
    case "$skip" in *" $p "*) ;; *) echo "$p" ;; esac
  done
}

running() {
  [ -f "$CONF" ] || return 1
  pid_alive "$DIR/run/munged.pid" && pid_alive "$DIR/run/slurmctld.pid" || return 1
  for n in "${NODES[@]}"; do pid_alive "$DIR/run/slurmd.$n.pid" || return 1; done
  SLURM_CONF=$CONF scontrol ping >/dev/null 2>&1
}

install_packages() {
  local missing=()
  for b in slurmctld slurmd sbatch munged; do
    command -v "$b" >/dev/null 2>&1 || [ -x "/usr/sbin/$b" ] || missing+=("$b")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  command -v apt-get >/dev/null || { log "missing ${missing[*]} and no apt-get"; exit 1; }
  log "installing slurmctld slurmd slurm-client munge (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null || true
  apt-get install -y -q --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
}

resolve_nodes() {
  local n
  for n in "${NODES[@]}"; do
    getent hosts "$n" >/dev/null && continue
    log "adding '127.0.0.1 ${NODES[*]}' to /etc/hosts"
    echo "127.0.0.1 ${NODES[*]}  # scalekd slurm_local_cluster" >> /etc/hosts
    return
  done
}

write_conf() {
  local host i
  host=$(hostname -s)
  cat > "$CONF" <<EOF
# written by scripts/slurm_local_cluster.sh: two emulated nodes on one host
ClusterName=scalekd-local
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$DIR/munge/munge.socket,cred_expire=5
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.%n.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.%n.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1,sched_interval=2
JobRequeue=1
KillWait=5
OverTimeLimit=0
InactiveLimit=0
MinJobAge=600
ReturnToService=2
SlurmdParameters=config_overrides
EOF
  i=0
  for n in "${NODES[@]}"; do
    i=$((i + 1))
    echo "NodeName=$n NodeHostname=localhost NodeAddr=127.0.0.1 Port=$((PORT + 3 + i))" \
         "CPUs=$CPUS State=UNKNOWN" >> "$CONF"
  done
  local IFS=,
  echo "PartitionName=debug Nodes=${NODES[*]} Default=YES MaxTime=INFINITE State=UP" >> "$CONF"
}

start() {
  if running; then
    log "already running in $DIR"
    echo "export SLURM_CONF=$CONF"
    return 0
  fi
  if [ -d "$DIR" ]; then (stop) >/dev/null 2>&1; fi  # leftovers of a dead cluster
  install_packages
  resolve_nodes
  mkdir -p "$DIR"/{munge,state,run,log} "${NODES[@]/#/$DIR/spool/}"
  chmod 755 "$DIR" "$DIR/munge"
  write_conf
  export SLURM_CONF=$CONF "${MARK%%=*}=${MARK#*=}"

  mungekey --create --keyfile="$DIR/munge/munge.key" >/dev/null 2>&1
  chmod 400 "$DIR/munge/munge.key"
  munged --socket="$DIR/munge/munge.socket" --key-file="$DIR/munge/munge.key" \
    --pid-file="$DIR/run/munged.pid" --seed-file="$DIR/munge/munged.seed" \
    --log-file="$DIR/log/munged.log" --force
  slurmctld -f "$CONF" -c
  for n in "${NODES[@]}"; do slurmd -f "$CONF" -N "$n"; done

  local deadline=$((SECONDS + 60)) idle
  while :; do
    idle=$(sinfo -h -p debug -t idle -o '%D' 2>/dev/null | awk '{s += $1} END {print s + 0}')
    [ "$idle" -ge ${#NODES[@]} ] && break
    if [ $SECONDS -ge $deadline ]; then
      log "nodes not idle after 60 s; logs in $DIR/log"
      sinfo -N -l >&2 || true
      tail -n 20 "$DIR"/log/*.log >&2 || true
      exit 1
    fi
    sleep 0.5
  done
  log "up: ${NODES[*]} idle in partition debug ($DIR)"
  echo "export SLURM_CONF=$CONF"
}

stop() {
  set +e  # best effort: kill whatever is found
  [ -d "$DIR" ] || { log "nothing in $DIR"; return 0; }
  if [ -f "$CONF" ] && pid_alive "$DIR/run/slurmctld.pid"; then
    local jobs
    jobs=$(SLURM_CONF=$CONF squeue -h -o %i 2>/dev/null)
    if [ -n "$jobs" ]; then
      # shellcheck disable=SC2086  # one argument per job id
      SLURM_CONF=$CONF scancel --quiet $jobs 2>/dev/null
      for _ in $(seq 60); do  # their steps end within KillWait (5 s)
        [ -z "$(SLURM_CONF=$CONF squeue -h -o %i 2>/dev/null)" ] && break
        sleep 0.25
      done
    fi
  fi
  local pids p alive
  pids=$(cluster_procs)
  for p in $pids; do kill -TERM "$p" 2>/dev/null; done
  for _ in $(seq 50); do
    alive=0
    for p in $pids; do live "$p" && alive=1; done
    [ $alive -eq 0 ] && break
    sleep 0.2
  done
  for p in $pids; do kill -KILL "$p" 2>/dev/null; done
  rm -rf "$DIR"
  log "stopped (killed pids:$(printf ' %s' $pids)), $DIR removed"
  return 0
}

case "$cmd" in
  start) start ;;
  stop) stop ;;
  status)
    if running; then SLURM_CONF=$CONF sinfo; SLURM_CONF=$CONF squeue; else echo "not running"; exit 1; fi ;;
  *) echo "usage: $0 start|stop|status [DIR]" >&2; exit 2 ;;
esac
