#!/bin/sh
# The memcg writeback workload of the tests (test/helpers/memcg.ts): fsync'd writes from a
# shell placed in its own memory cgroup. The cgroup stays after the run (hvwatch check
# reads its series at the end; a removed cgroup's series are dropped): remove it with
#   rmdir <memory hierarchy>/$HVWATCH_EXAMPLE_CGROUP
# Environment: HVWATCH_EXAMPLE_CGROUP (default hvwatch-example), HVWATCH_EXAMPLE_MIB (default 32).
set -eu
name=${HVWATCH_EXAMPLE_CGROUP:-hvwatch-example}
mib=${HVWATCH_EXAMPLE_MIB:-32}
if [ -d /sys/fs/cgroup/memory ]; then
  root=/sys/fs/cgroup/memory                      # cgroup v1 memory hierarchy
else
  root=/sys/fs/cgroup                             # cgroup v2
  echo +memory > "$root/cgroup.subtree_control" 2>/dev/null || true
fi
mkdir -p "$root/$name"
file=${TMPDIR:-/var/tmp}/hvwatch-example-$$.bin
sh -c "echo \$\$ > '$root/$name/cgroup.procs' && for i in 1 2 3 4; do dd if=/dev/zero of='$file' bs=1M count=$((mib / 4)) conv=fsync status=none; done"
rm -f "$file"
