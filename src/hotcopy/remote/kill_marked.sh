#!/bin/sh
# hotcopy: stop every process whose environment holds MARKER (NAME=VALUE, exactly), as
# hotcopy sets it on what it starts for a job: TERM, TERM again, then KILL, 2.5 s apart.
# Usage: kill_marked.sh MARKER. Exit 1, naming them, if some survive.
marker=$1
marked() { grep -Fzlx -e "$marker" /proc/[0-9]*/environ 2>/dev/null | cut -d/ -f3; }
pids=$(marked)
[ -z "$pids" ] && exit 0
# shellcheck disable=SC2086 # one pid per word
kill -TERM $pids 2>/dev/null
for next in TERM KILL ''; do
  i=0
  while [ "$i" -lt 50 ]; do
    pids=$(marked)
    [ -z "$pids" ] && exit 0
    sleep 0.05
    i=$((i + 1))
  done
  # shellcheck disable=SC2086 # one pid per word
  [ -n "$next" ] && kill "-$next" $pids 2>/dev/null
done
echo "still running: $pids" >&2
exit 1
