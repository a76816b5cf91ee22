#!/bin/bash
# hotcopy backup sender: ARGS... is the backup command; its stream goes to the target.
# Usage: send.sh CONNECT METER LIMIT IO_TIMEOUT COMMAND...
# The tool's stdout (the xbstream) is counted, paced and sent; its log (stderr) comes
# back on our stdout, each line stamped with this host's clock; so do pv's byte counts
# and the receiver's answer.
set -u -o pipefail
dir=${0%/*}
connect=$1 meter=$2 limit=$3 io=$4
shift 4
token=$(<"$dir/token")
exec 3>&1
stamp() {
  while IFS= read -r line; do printf 'HOTCOPY-LOG %s %s\n' "${EPOCHREALTIME:-}" "$line"; done
}
backup() { { "$@" 2>&1 >&4 4>&- | stamp >&3; } 4>&1; }
count() { if [ "$meter" = pv ]; then pv -n -b -i 0.25 2>&3; else cat; fi; }
pace() { if [ "$limit" -gt 0 ]; then pv -q -L "$limit"; else cat; fi; }
{ printf 'xbstream %s\n' "$token"; backup "$@" | count; } | pace \
  | socat -T "$io" -t "$io" - "$connect"
