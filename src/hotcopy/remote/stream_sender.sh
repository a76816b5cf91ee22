#!/bin/bash
# hotcopy stream sender: tar of list INDEX, counted, compressed, paced, to the target.
# Usage: send.sh INDEX CONNECT ROOT ZSTD_LEVEL LIMIT METER IO_TIMEOUT CHECKPOINT_RECORDS
#                RECORD_BLOCKS SOCKET_BUFFER
# One per stream on the source. pv (or tar's checkpoints) count the archive's bytes on
# stdout; socat's stdout carries the receiver's answer back; both reach the controller.
# The pace is set after compression, on what the network carries, and keeps zstd's
# output flowing (a limit before zstd could starve the socket past its idle timeout).
set -u -o pipefail
dir=${0%/*}
index=$1 connect=$2 root=$3 level=$4 limit=$5 meter=$6 io=$7 checkpoint=$8 blocks=$9
buffer=${10}
token=$(<"$dir/token")
codec=none; [ "$level" -gt 0 ] && codec=zstd
exec 3>&1
archive() {
  local progress=()
  [ "$meter" = tar ] && progress=("--checkpoint=$checkpoint"
                                  "--checkpoint-action=echo=HOTCOPY-CHECKPOINT %u")
  tar -c -b "$blocks" -f - -C "$root" --numeric-owner --no-recursion --null \
      -T "$dir/files-$index" "${progress[@]}" 2>&3
}
count() { if [ "$meter" = pv ]; then pv -n -b -i 0.5 2>&3; else cat; fi; }
compress() { if [ "$codec" = zstd ]; then zstd -T0 "-$level" -q -c; else cat; fi; }
stream() { printf '%s %s %s\n' "$index" "$codec" "$token"; archive | count | compress; }
if [ "$limit" -gt 0 ]; then
  stream | pv -q -L "$limit" | socat -b "$buffer" -T "$io" -t "$io" - "$connect"
else
  stream | socat -b "$buffer" -T "$io" -t "$io" - "$connect"
fi
