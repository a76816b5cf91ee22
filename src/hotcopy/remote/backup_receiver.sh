#!/bin/bash
# hotcopy backup receiver: one connection carries the whole xbstream into the staging dir.
# Runs once per accepted connection (socat EXEC), the socket on stdin/stdout; the
# token is compared with shell builtins, so it is in no process's argv.
set -u -o pipefail
dir=${0%/*}
refuse() {
  printf '%s %s %s\n' "$(date +%s)" "${SOCAT_PEERADDR:-?}" "$1" >> "$dir/refused"
  echo "HOTCOPY-ERR refused: $1"
  exit 1
}
IFS=' ' read -r -t 30 -n 256 kind token || refuse "no header"
if [ -z "$token" ] || [ "$token" != "$(<"$dir/token")" ]; then refuse "bad token"; fi
[ "$kind" = xbstream ] || refuse "bad stream kind"
mkdir "$dir/received" 2>/dev/null || refuse "the backup was already received"
err="$dir/received/errors"
"$(<"$dir/extractor")" -x -C "$(<"$dir/staging")" 2>"$err"
rc=$?
if [ $rc -eq 0 ]; then echo "HOTCOPY-OK"; exit 0; fi
echo "HOTCOPY-ERR extracting failed (exit $rc): $(tail -c 400 "$err" | tr '\n' ' ')"
exit 1
