# Shell helpers shared by the benchmark scripts (sourced, not run).

# Mount points at or below $1, deepest first (to unmount in that order).
mounts_under() {
  awk -v p="$1" '$5 == p || index($5, p "/") == 1 { print $5 }' /proc/self/mountinfo | sort -r
}

# Whether $1 is a mount point.
is_mountpoint() { awk -v m="$1" '$5 == m { f = 1 } END { exit !f }' /proc/self/mountinfo; }

# Waits up to $2 seconds for process $1 to exit; fails if it has not.
wait_pid_gone() {
  local i
  for ((i = 0; i < $2 * 10; i++)); do
    kill -0 "$1" 2>/dev/null || return 0
    sleep 0.1
  done
  return 1
}
