#!/bin/bash
# hotcopy stream receiver: one connection carries one tar stream into the staging dir.
# Runs once per accepted connection (socat EXEC), stdin/stdout being the socket. The
# token is compared with shell builtins, so it never appears in any process's argv.
set -u -o pipefail
dir=${0%/*}
refuse() {
  printf '%s %s %s\n' "$(date +%s)" "${SOCAT_PEERADDR:-?}" "$1" >> "$dir/refused"
  echo "HOTCOPY-ERR refused: $1"
  exit 1
}
IFS=' ' read -r -t 30 -n 256 index codec token || refuse "no header"
if [ -z "$token" ] || [ "$token" != "$(<"$dir/token")" ]; then refuse "bad token"; fi
case $index in ''|*[!0-9]*) refuse "bad stream number" ;; esac
case $codec in zstd) decode=(zstd -d -q -c) ;; none) decode=(cat) ;; *) refuse "bad codec" ;; esac
mkdir "$dir/stream-$index" 2>/dev/null || refuse "stream $index was already received"
err="$dir/stream-$index/errors"
# The sender's record size: a reader with a smaller one stops at the end-of-archive
# marker and leaves the last record's padding unread, and the writer before it dies of
# SIGPIPE (zstd: exit 70), failing a complete stream.
blocks=$(<"$dir/record_blocks")
case $blocks in ''|*[!0-9]*) refuse "bad record size" ;; esac
"${decode[@]}" 2>"$err" | tar -x -b "$blocks" -f - -C "$(<"$dir/staging")" --numeric-owner -p \
    2>>"$err"
rc=$?
if [ $rc -eq 0 ]; then echo "HOTCOPY-OK $index"; exit 0; fi
echo "HOTCOPY-ERR stream $index: extracting failed (exit $rc): $(tail -c 400 "$err" | tr '\n' ' ')"
exit 1
