#!/bin/sh
# hotcopy: write standard input to PATH with MODE, never readable by others even for a
# moment (the file is created empty under umask 077, then given its mode, then filled).
# Usage: write_file.sh PATH MODE (octal)
set -e
umask 077
: > "$1"
chmod "$2" "$1"
cat > "$1"
