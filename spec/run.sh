#!/usr/bin/env bash
# Runs spec files in parallel: JOBS runs at once, one spec file each, the slowest first (by the
# times of the last run, kept in build/spec-times; in a fresh tree by spec/times, a run's times
# kept with the specs; by size for a file in neither). Each file's run is cut
# at TIMEOUT seconds, so a spec that hangs fails instead of hanging the whole suite. Then every
# file's output is printed, in name order, and the closing line "N passed, N failed" summed over
# the files; the exit code is 0 only when every file passed.
#
#   spec/run.sh JOBS TIMEOUT COMMAND... -- SPEC_FILES_OR_FOLDERS...
#   spec/run.sh 4 900 lua5.4 /usr/bin/busted --ignore-lua -- spec
#
# The specs are written for this: each starts its own emulators on free ports and works in
# temporary folders of its own, so files can run side by side.
set -u

jobs=$1
limit=$2
shift 2
cmd=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do
  cmd+=("$1")
  shift
done
shift || true

files=()
for a in "$@"; do
  if [ -d "$a" ]; then
    for f in "$a"/*_spec.lua; do files+=("$f"); done
  else
    files+=("$a")
  fi
done
[ ${#files[@]} -gt 0 ] || { echo "spec/run.sh: no spec files in: $*" >&2; exit 2; }

times=build/spec-times
mkdir -p build
# a fresh tree orders by the times of a run kept with the specs (spec/times), then by its own
known=$times
[ -f "$known" ] || known=spec/times
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT

# the slowest first: a long file started last would make the whole run wait for it alone
weight() {
  local t
  t=$(awk -v f="$1" '$1 == f { print $2 }' "$known" 2>/dev/null | tail -n 1)
  if [ -n "$t" ]; then echo "$t"; else echo "$(($(wc -c < "$1") / 1000))"; fi
}
# A file that measures time on the wall (a frame budget) says so on a line of its own,
# "-- spec/run.sh: alone": it runs after the others, with nothing beside it.
: > "$logs/alone"
for f in "${files[@]}"; do
  if grep -q '^-- spec/run.sh: alone' "$f"; then echo "$f" >> "$logs/alone"; else echo "$(weight "$f") $f"; fi
done | sort -rn | cut -d' ' -f2- > "$logs/order"

run_one() {
  local f=$1 name start rc
  name=$(echo "$f" | tr '/' '_')
  start=$(date +%s.%N)
  timeout --kill-after=10 "$limit" "${cmd[@]}" "$f" > "$logs/$name.log" 2>&1
  rc=$?
  echo "$rc" > "$logs/$name.rc"
  echo "$f $(echo "$(date +%s.%N) - $start" | bc)" > "$logs/$name.time"
}
export -f run_one
export logs limit
export cmd_words="${cmd[*]}"

# xargs runs the files JOBS at a time; each run_one gets the command through the array below
while read -r f; do printf '%s\0' "$f"; done < "$logs/order" |
  xargs -0 -P "$jobs" -I{} bash -c 'cmd=($cmd_words); run_one "$1"' _ {}
while read -r f; do
  cmd=($cmd_words)
  run_one "$f"
done < "$logs/alone"

passed=0
failed=0
: > "$logs/times"
for f in $(printf '%s\n' "${files[@]}" | sort); do
  name=$(echo "$f" | tr '/' '_')
  echo "==== $f"
  cat "$logs/$name.log"
  cat "$logs/$name.time" >> "$logs/times" 2>/dev/null
  rc=$(cat "$logs/$name.rc" 2>/dev/null || echo 1)
  line=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$logs/$name.log" | tail -n 1)
  f_failed=0
  if [ -n "$line" ]; then
    passed=$((passed + $(echo "$line" | sed -E 's/^([0-9]+) passed.*/\1/')))
    f_failed=$(echo "$line" | sed -E 's/^[0-9]+ passed, ([0-9]+) failed.*/\1/')
    failed=$((failed + f_failed))
  fi
  if [ "$rc" != 0 ] && [ "$f_failed" = 0 ]; then
    # a failure its closing line does not count: it died, was cut by the time limit, or a
    # checker around it (valgrind, a sanitizer) found an error: the file counts as one failure
    failed=$((failed + 1))
    [ "$rc" -ge 124 ] && echo "==== $f: stopped after ${limit}s (exit $rc)" || echo "==== $f: exit $rc"
  fi
done
sort -k2 -rn "$logs/times" > "$times" 2>/dev/null || true
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
