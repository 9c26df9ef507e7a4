#!/usr/bin/env bash
# A real two-node SLURM cluster on this one machine, for the SLURM tests (Debian/Ubuntu, root).
#
#   bash scripts/slurm-local.sh start    # install (if missing), configure, start, wait until idle
#   bash scripts/slurm-local.sh status   # exit 0 when a cluster answers with idle/mixed/alloc nodes
#   bash scripts/slurm-local.sh stop     # end only the daemons `start` started (recorded pids)
#
# Two `slurmd -N lpasrn1|lpasrn2` on one host (one port each) are the two nodes; slurmctld and
# munged run beside them. Everything the script writes lives in $LPASRN_SLURM_DIR (default
# /var/tmp/lpasrn-slurm) except /etc/slurm/slurm.conf (the place every SLURM client reads), which it
# writes only when absent or written by this script before. `start` is idempotent: a cluster that
# already answers is used as it is and nothing is started (nor recorded, so `stop` leaves it alone).
# Exit status 3 from `start` means SLURM cannot be provided here (not root and not installed).
set -euo pipefail

STATE=${LPASRN_SLURM_DIR:-/var/tmp/lpasrn-slurm}
CONF=/etc/slurm/slurm.conf
MARKER="# written by lpasrn scripts/slurm-local.sh"
NODES=(lpasrn1 lpasrn2)
CTLD_PORT=${LPASRN_SLURMCTLD_PORT:-6817}
SLURMD_PORT=${LPASRN_SLURMD_PORT:-6818}   # node i listens on SLURMD_PORT + i
PIDS=$STATE/started.pids                    # "name pid" per daemon this script started

say() { echo "slurm-local: $*" >&2; }

cluster_up() {
  # Nodes that can run jobs answer as idle, mixed or allocated; down/drained ones do not count.
  local states
  states=$(timeout 10 sinfo -h -o '%T' 2>/dev/null) || return 1
  grep -Eq '^(idle|mixed|allocated)' <<<"$states"
}

need_nodes_idle() {
  local n
  n=$(timeout 10 sinfo -h -N -o '%N %T' 2>/dev/null | grep -Ec ' (idle|mixed|allocated)' || true)
  [ "$n" -ge "${#NODES[@]}" ]
}

install_slurm() {
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
     && command -v munged >/dev/null; then
    return 0
  fi
  if [ "$(id -u)" != 0 ]; then
    say "SLURM is not installed and this is not root: cannot install slurm-wlm and munge" \
        "(run as root, or install them: apt-get install slurm-wlm munge)"
    exit 3
  fi
  if ! command -v apt-get >/dev/null; then
    say "SLURM is not installed and there is no apt-get: install slurmctld, slurmd and munge yourself"
    exit 3
  fi
  say "installing slurm-wlm and munge (apt-get)"
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge >/dev/null
}

start_munge() {
  # A working munged (ours from before, or the system's) is reused: credentials only need one.
  if [ -S /run/munge/munge.socket.2 ] && munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
    return 0
  fi
  # NOTE: munged refuses to run as root with the key owned by munge: it runs as the munge user,
  # which needs /run/munge (tmpfs, gone after a reboot) and its key at 0400.
  mkdir -p /etc/munge /run/munge /var/lib/munge /var/log/munge
  [ -s /etc/munge/munge.key ] || mungekey --create --keyfile=/etc/munge/munge.key 2>/dev/null \
    || dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
  chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge
  chmod 0700 /etc/munge; chmod 0400 /etc/munge/munge.key; chmod 0755 /run/munge
  rm -f /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock /run/munge/munged.pid
  runuser -u munge -- /usr/sbin/munged
  for _ in $(seq 50); do [ -s /run/munge/munged.pid ] && break; sleep 0.1; done
  echo "munged $(cat /run/munge/munged.pid)" >>"$PIDS"
}

write_conf() {
  local host cpus mem i
  if [ -f "$CONF" ] && ! grep -qF "$MARKER" "$CONF"; then
    say "$CONF exists and was not written by this script: not overwriting it." \
        "Start that cluster's daemons, or move the file away to use the local test cluster."
    exit 1
  fi
  host=$(hostname -s)
  cpus=$(nproc)
  mem=$(slurmd -C | grep -o 'RealMemory=[0-9]*' | cut -d= -f2)
  mkdir -p /etc/slurm "$STATE/ctld" "$STATE/log"
  {
    echo "$MARKER ($(date -u +%FT%TZ)); state in $STATE"
    cat <<CONF
ClusterName=lpasrn-local
SlurmctldHost=$host
SlurmctldPort=$CTLD_PORT
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
# A requeued job waits cred_expire seconds before it may start again (default 120), and slurmd
# refuses a relaunch inside the second of the requeue ("Job credential revoked"): keep it short.
AuthInfo=cred_expire=10
ProctrackType=proctrack/linuxproc
# task/affinity binds each task to its CPUs, as on a real cluster: a step without --cpus-per-task
# (srun does not inherit it since 22.05) gets one CPU, which the tests check.
TaskPlugin=task/affinity
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1,sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool-%n
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd-%n.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd-%n.log
ReturnToService=2
JobRequeue=1
KillWait=30
MpiDefault=none
CONF
    for i in "${!NODES[@]}"; do
      echo "NodeName=${NODES[$i]} NodeHostname=$host NodeAddr=127.0.0.1 Port=$((SLURMD_PORT + i))" \
           "CPUs=$cpus RealMemory=$mem State=UNKNOWN"
    done
    echo "PartitionName=local Nodes=$(IFS=,; echo "${NODES[*]}") Default=YES MaxTime=INFINITE State=UP"
  } >"$CONF"
}

start_daemon() {  # name, command...: start in the background, record the pid of the daemon itself
  local name=$1; shift
  setsid "$@" </dev/null >>"$STATE/log/$name.out" 2>&1 &
  echo "$name $!" >>"$PIDS"
}

start() {
  if command -v sinfo >/dev/null && cluster_up; then
    say "a SLURM cluster already answers: using it as it is ($(sinfo -h -N -o '%N=%T' | tr '\n' ' '))"
    return 0
  fi
  install_slurm
  if [ "$(id -u)" != 0 ]; then
    say "SLURM is installed but no cluster answers and this is not root: cannot start slurmd"
    exit 3
  fi
  mkdir -p "$STATE"
  stop_recorded quiet  # leftovers of an earlier start that was not stopped
  start_munge
  write_conf
  # -D: stay in the foreground, so the recorded pid is the daemon's; -i: ignore saved node state.
  start_daemon slurmctld /usr/sbin/slurmctld -D -i -c
  local node
  for node in "${NODES[@]}"; do
    mkdir -p "$STATE/spool-$node"
    start_daemon "slurmd-$node" /usr/sbin/slurmd -D -N "$node"
  done
  for _ in $(seq 60); do
    if need_nodes_idle; then
      say "up: $(sinfo -h -N -o '%N=%T' | tr '\n' ' ')(logs in $STATE/log)"
      return 0
    fi
    sleep 0.5
  done
  say "nodes not idle after 30 s: $(timeout 10 sinfo -h -N -o '%N=%T' 2>&1 | tr '\n' ' ')"
  tail -n 5 "$STATE"/log/*.log >&2 || true
  exit 1
}

stop_recorded() {
  [ -f "$PIDS" ] || { [ "${1:-}" = quiet ] || say "nothing recorded in $PIDS: nothing to stop"; return 0; }
  local name pid
  # Reverse order: slurmds and slurmctld before the munged they authenticate with.
  while read -r name pid; do
    if kill -0 "$pid" 2>/dev/null; then
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
      [ "${1:-}" = quiet ] || say "stopped $name ($pid)"
    fi
  done < <(tac "$PIDS")
  rm -f "$PIDS"
}

case "${1:-}" in
  start) start ;;
  stop) stop_recorded ;;
  status) command -v sinfo >/dev/null && cluster_up && sinfo ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
