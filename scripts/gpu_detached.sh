#!/usr/bin/env bash
# Work longer than one device call (10 minutes) on one warm GPU machine: start a command in its own process
# session (it outlives the call that starts it), then wait on it from later calls sent back to back.
#
#   scripts/gpu_detached.sh start 'bash scripts/gpu_real_model.sh tta'   # returns at once
#   scripts/gpu_detached.sh wait 540                                      # up to 540 s; the log's tail; rc if done
#   scripts/gpu_detached.sh collect                                       # what is there now -> $OUT
#
# `wait` and `collect` both leave $OUT/detached.tgz: /tmp/detached/out and the log as they are at that moment,
# one file (a call returns at most 8), so every reply carries the latest results even if a later call never
# comes back.
# The command runs with OUT=/tmp/detached/out (a call's own $OUT is emptied before the next call), its output in
# /tmp/detached/log. `wait` exits 0 once the command has ended (its exit code in /tmp/detached/rc), 3 while it
# still runs. The machine is kept only 30 s after a call: send each `wait` right after the previous reply.
set -uo pipefail
D=/tmp/detached
case ${1:-} in
  start)
    [ -f $D/pid ] && kill -0 "$(cat $D/pid)" 2>/dev/null && { echo "already running: pid $(cat $D/pid)"; exit 2; }
    rm -rf $D && mkdir -p $D/out
    OUT=$D/out setsid bash -c "$2; echo \$? > $D/rc" > $D/log 2>&1 < /dev/null &
    echo $! > $D/pid
    echo "started pid $(cat $D/pid): $2" ;;
  wait)
    end=$((SECONDS + ${2:-540}))
    while [ ! -f $D/rc ] && [ $SECONDS -lt $end ]; do sleep 5; done
    tail -n "${TAIL:-25}" $D/log
    [ -n "${OUT:-}" ] && tar czf "$OUT/detached.tgz" -C $D out log
    [ -f $D/rc ] && { echo "ended rc=$(cat $D/rc)"; exit 0; }
    echo "still running"; exit 3 ;;
  collect)
    tar czf "${OUT:?}/detached.tgz" -C $D out log && ls -la "$OUT" ;;
  *) echo "usage: $0 start CMD | wait [SECONDS] | collect"; exit 2 ;;
esac
