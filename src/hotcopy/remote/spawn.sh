#!/bin/sh
# hotcopy: start COMMAND... detached (own session, no terminal, no inherited output) and
# print its pid. `setsid CMD &` rather than `setsid -f`: in a non-interactive shell the
# background child is no process-group leader, so setsid execs in place and $! is the
# command's own pid (so is it through `env NAME=VALUE CMD`, which also execs).
setsid "$@" </dev/null >/dev/null 2>&1 &
echo "$!"
