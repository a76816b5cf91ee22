#!/bin/sh
# List every directory under DATADIR that lives on another device than DATADIR itself
# (a mount point, a btrfs subvolume, a ZFS child dataset): a snapshot of the datadir's
# filesystem does not hold their files.
# Usage: nested_filesystems.sh DATADIR
set -u
dev=$(stat -c %d -- "$1") || exit 1
find "$1" -xdev -mindepth 1 -type d -printf '%D\t%p\n' | while IFS="$(printf '\t')" read -r d p; do
    [ "$d" = "$dev" ] || printf '%s\n' "$p"
done
