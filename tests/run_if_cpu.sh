#!/bin/sh
# run_if_cpu.sh <cpu-flag|none> <test binary> [args...]
# Runs the binary when /proc/cpuinfo lists the flag; otherwise exits 77 (ctest: skipped), so a
# binary built for an ISA the host lacks never starts (it could fault in static initialisers).
flag=$1
shift
if [ "$flag" != none ] && ! grep -qw "$flag" /proc/cpuinfo 2>/dev/null; then
  echo "skipped: this CPU has no $flag"
  exit 77
fi
exec "$@"
