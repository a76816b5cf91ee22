#!/bin/bash
# hotcopy: the sending end of a zfs_send transfer, run on the source by the controller.
# Usage: zfs_send_stream.sh WORKDIR CONNECT SNAPSHOT BASE LIMIT IDLE
#   WORKDIR   the job's 0700 directory holding the one-time token file
#   CONNECT   socat connect address of the target's listener
#   SNAPSHOT  what to send; BASE an incremental base snapshot or ""
#   LIMIT     bandwidth limit for pv in KiB/s, or ""
#   IDLE      seconds of silence after which the stream counts as broken
# The token goes first, then the stream. dd counts the bytes; its progress goes to
# standard output (the controller's pipe), errors to WORKDIR/*.err.
set -o pipefail
dir=$1
connect=$2
snapshot=$3
base=$4
limit=$5
idle=$6
send() {
  cat "$dir/token" || return
  if [ -n "$base" ]; then zfs send -i "$base" "$snapshot"; else zfs send "$snapshot"; fi
}
throttle() { if [ -n "$limit" ]; then pv -q -L "${limit}k"; else cat; fi; }
{ send 2>"$dir/send.err" | throttle | dd bs=1M status=progress 2>&3 \
    | socat -u -T "$idle" STDIN "$connect" 2>"$dir/socat.err"; } 3>&1
