#!/bin/sh
# hotcopy: set the rate of a job's pacing pv processes (those started with -L) while
# they run, through pv's remote control. Usage: pace.sh MARKER BYTES_PER_SECOND
# MARKER is NAME=VALUE, exactly as in the processes' environment. Prints how many
# were set; none found is no error (a stream between two attempts has none).
marker=$1 rate=$2
pids=$(grep -Fzlx -e "$marker" /proc/[0-9]*/environ 2>/dev/null | cut -d/ -f3)
set=0
for pid in $pids; do
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = pv ] || continue
  tr '\0' '\n' < "/proc/$pid/cmdline" 2>/dev/null | grep -qx -- -L || continue
  pv -R "$pid" -L "$rate" 2>/dev/null && set=$((set + 1))
done
echo "$set"
