#!/bin/sh
# A TCP listener for `hotcopy check`'s port probe: accepts and discards connections on
# ADDRESS:PORT for at most SECONDS, detached from the caller (its stdio closed, so the
# command that starts it returns at once). Stopped early by the caller through the
# marker variable in its environment.
# usage: probe_listen.sh SECONDS PORT ADDRESS
set -eu
seconds=$1
port=$2
address=$3
setsid -f timeout "$seconds" socat -u "TCP-LISTEN:$port,bind=$address,reuseaddr,fork" \
    OPEN:/dev/null </dev/null >/dev/null 2>&1
