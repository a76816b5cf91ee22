#!/bin/sh
# hotcopy: start writing back, without waiting for it, what the page cache holds of
# the regular files under DIR whose inode changed since SINCE (seconds since the epoch,
# this host's clock; empty: every file), and drop their clean pages: a copy's data
# reaches the disk while the copy runs, with no filesystem-wide sync stalling it.
# (dd's iflag=nocache with count=0 is posix_fadvise(POSIX_FADV_DONTNEED) on the whole
# file: the kernel starts writeback of its dirty pages and drops the clean ones.)
# Prints this host's time at the start of the pass: the next call's SINCE.
# Usage: start_writeback.sh DIR [SINCE]
set -eu
dir=$1
since=${2:-}
date +%s.%N
if [ -n "$since" ]; then
    set -- -newerct "@$since"
else
    set --
fi
# A file that vanishes between find and dd is no failure: there is nothing to write.
find "$dir" -type f "$@" -exec sh -c '
    for file do
        dd if="$file" iflag=nocache count=0 status=none 2>/dev/null || :
    done' sh {} +
