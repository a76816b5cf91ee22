#!/bin/sh
# hotcopy: the receiving end of a zfs_send transfer, started detached on the target.
# Usage: zfs_recv_listener.sh WORKDIR LISTEN DATASET FORCE IDLE
#   WORKDIR  the job's 0700 directory holding the one-time token file
#   LISTEN   socat listen address (bound to the target, accepting only the source)
#   DATASET  where to receive; FORCE "-F" for an incremental stream into the existing
#            staging clone, "" for a full one into a new dataset
#   IDLE     seconds of silence after which the stream counts as broken
# The token is compared here, read from the 0600 file; `read` takes exactly the first
# line off the pipe. An incremental stream must find its dataset: zfs-fuse would
# otherwise apply it to whichever dataset holds the base snapshot, the live datadir.
# The outcome goes to WORKDIR/status (the exit code), errors to WORKDIR/recv.err.
exec </dev/null >/dev/null 2>&1  # let the starting command return: it waits for EOF
dir=$1
listen=$2
dataset=$3
force=$4
idle=$5
finish() { echo "$1" > "$dir/status.new" && mv "$dir/status.new" "$dir/status"; }
socat -u -T "$idle" "$listen" STDOUT 2>"$dir/socat.err" | {
  IFS= read -r got
  if [ "$got" != "$(cat "$dir/token")" ]; then
    echo "the stream did not start with this job's token" > "$dir/recv.err"
    finish 1
  elif [ -n "$force" ] && ! zfs list -H -o name "$dataset" >/dev/null 2>"$dir/recv.err"; then
    finish 1
  else
    [ -n "$force" ] && zfs umount "$dataset" 2>/dev/null  # nobody holds it while overwritten
    # shellcheck disable=SC2086 # FORCE is "" or "-F": no word when empty
    zfs recv $force "$dataset" 2>"$dir/recv.err"
    finish $?
  fi
}
