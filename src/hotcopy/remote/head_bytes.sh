#!/bin/sh
# hotcopy: run COMMAND... and keep the first LIMIT bytes of its output (a relay log
# decoded from a position can be huge; the event sought is near its start).
# Usage: head_bytes.sh LIMIT COMMAND...
limit=$1
shift
"$@" | head -c "$limit"
