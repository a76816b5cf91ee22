#!/bin/sh
# hotcopy: list the processes that hold a file, a directory or their working directory
# under any of the directories given as arguments, one "PID COMMAND" line each.
# Moving or removing a datadir is only safe when nothing holds it (a live mysqld keeps
# its tablespaces open); /proc is read directly, so neither fuser nor lsof is needed.
set -u
[ "$#" -gt 0 ] || exit 0
for pid_dir in /proc/[0-9]*; do
  [ -d "$pid_dir" ] || continue
  for dir in "$@"; do
    held=$(find "$pid_dir/cwd" "$pid_dir/root" "$pid_dir/fd" -maxdepth 1 \
             \( -lname "$dir" -o -lname "$dir/*" \) -print -quit 2>/dev/null)
    if [ -n "$held" ]; then
      printf '%s %s\n' "${pid_dir#/proc/}" "$(cat "$pid_dir/comm" 2>/dev/null)"
      break
    fi
  done
done
