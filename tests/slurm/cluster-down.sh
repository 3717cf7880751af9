#!/usr/bin/env bash
# Stops the cluster tests/slurm/cluster-up.sh started in DIR: every daemon
# DIR/pids names gets SIGTERM at once (each takes about 2 s to save its state
# and exit), then SIGKILL if it is still there after 5 s.
set -uo pipefail
dir=${1:?usage: cluster-down.sh DIR}
[ -f "$dir/pids" ] || exit 0
pids=$(cut -d' ' -f2 "$dir/pids")
kill $pids 2>/dev/null
for _ in $(seq 50); do
  alive=0
  for pid in $pids; do kill -0 "$pid" 2>/dev/null && alive=1; done
  [ "$alive" = 0 ] && break
  sleep 0.1
done
kill -9 $pids 2>/dev/null
rm -f "$dir/pids"
exit 0
