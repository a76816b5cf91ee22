#!/bin/sh
# hotcopy: stop process PID and its children: TERM, then KILL after POLLS x 50 ms.
# Usage: terminate.sh PID POLLS. A pid that is gone or a zombie counts as stopped.
pid=$1
polls=$2
alive() {
  state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) && [ -n "$state" ] && [ "$state" != Z ]
}
alive || exit 0
pkill -TERM -P "$pid" 2>/dev/null
kill -TERM "$pid" 2>/dev/null
i=0
while [ "$i" -lt "$polls" ]; do
  alive || exit 0
  sleep 0.05
  i=$((i + 1))
done
pkill -KILL -P "$pid" 2>/dev/null
kill -KILL "$pid" 2>/dev/null
exit 0
