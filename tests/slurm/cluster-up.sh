#!/usr/bin/env bash
# Starts a one-node Slurm cluster on loopback for the integration tests.
#
#   tests/slurm/cluster-up.sh DIR [CPUS]  start; writes DIR/slurm.conf and DIR/pids
#   tests/slurm/cluster-down.sh DIR       stop what DIR/pids names
#
# Needs root, and Debian's slurm-wlm and munge packages (.ci/run installs them).
# Everything the cluster writes (state, spool, logs) stays under DIR, so a
# start never sees the jobs of an earlier one. The node claims CPUS CPUs
# (default 8) whatever the machine has (SlurmdParameters=config_overrides), so
# a few small jobs run at once even on a 2-core runner, and a test can have a
# node smaller than a step's default request. Besides the default partition
# `debug`, the node is in `short`, whose jobs may run one minute at most.
# Exits non-zero, with the reason on stderr, when the cluster does not come up.
set -euo pipefail

dir=${1:?usage: cluster-up.sh DIR [CPUS]}
cpus=${2:-8}
for tool in munged slurmctld slurmd sinfo srun setpriv; do
  command -v "$tool" >/dev/null || { echo "cluster-up: $tool is not installed" >&2; exit 3; }
done
[ "$(id -u)" = 0 ] || { echo "cluster-up: must run as root (slurmd starts jobs as their user)" >&2; exit 3; }

mkdir -p "$dir"/{ctld,spool,log}
chmod 755 "$dir"
host=$(hostname -s)
memory=$(slurmd -C | head -n1 | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')

# munge: a key owned by munge, and the socket directory systemd would create.
[ -s /etc/munge/munge.key ] || mungekey --create --keyfile=/etc/munge/munge.key
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key
install -d -o munge -g munge -m 0755 /run/munge

cat >"$dir/slurm.conf" <<CONF
ClusterName=yibuild-test
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=512
ReturnToService=2
SchedulerParameters=batch_sched_delay=0
MinJobAge=30
KillWait=2
MailProg=/bin/true
SlurmdParameters=config_overrides
StateSaveLocation=$dir/ctld
SlurmdSpoolDir=$dir/spool
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
NodeName=$host CPUs=$cpus Sockets=1 CoresPerSocket=$cpus ThreadsPerCore=1 RealMemory=$memory NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
PartitionName=short Nodes=ALL MaxTime=1 State=UP
CONF
export SLURM_CONF=$dir/slurm.conf

# setpriv execs, so $! is the daemon itself; setsid keeps the daemons out of
# the caller's process group (a Ctrl-C in a terminal must not reach them).
if [ ! -S /run/munge/munge.socket.2 ]; then
  setsid setpriv --reuid=munge --regid=munge --init-groups munged -F --origin=127.0.0.1 \
    </dev/null >"$dir/log/munged.out" 2>&1 &
  echo "munged $!" >>"$dir/pids"
  for _ in $(seq 50); do [ -S /run/munge/munge.socket.2 ] && break; sleep 0.1; done
fi
setsid slurmctld -D -f "$SLURM_CONF" </dev/null >"$dir/log/slurmctld.out" 2>&1 &
echo "slurmctld $!" >>"$dir/pids"
setsid slurmd -D -f "$SLURM_CONF" </dev/null >"$dir/log/slurmd.out" 2>&1 &
echo "slurmd $!" >>"$dir/pids"

for _ in $(seq 100); do
  [ "$(sinfo -h -p debug -o %T 2>/dev/null)" = idle ] && exit 0
  sleep 0.1
done
echo "cluster-up: the node did not become idle in 10 s" >&2
sinfo -R >&2 || true
tail -n 20 "$dir"/log/* >&2 || true
exit 1
