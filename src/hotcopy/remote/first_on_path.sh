#!/bin/sh
# hotcopy: print the full path of the first of the given tools found on PATH (e.g.
# mariabackup before xtrabackup); exit 1 when none is installed.
for tool in "$@"; do
  if found=$(command -v "$tool"); then
    printf '%s\n' "$found"
    exit 0
  fi
done
exit 1
