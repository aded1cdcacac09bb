#!/bin/sh
# Builds the libFuzzer targets (Clang, ASan + UBSan) and, for each target, replays its seed
# corpus (tests/fuzz/corpus/<target>/) and then fuzzes it for a bounded time, printing the
# executions. New inputs go to a scratch copy of the corpus in the build directory, never into
# the repository; a crash stops the script (non-zero exit) and leaves the input as
# <build>/artifacts/<target>-crash-*.
#
# Usage: tests/fuzz/run.sh [seconds per target, default 60] [target ...]
#        tests/fuzz/run.sh --replay [target ...]        corpus replay only
#        tests/fuzz/run.sh --make-corpus SECONDS [target ...]
#            regenerates corpus/<target>/: fuzzes from an empty corpus for SECONDS, then keeps a
#            minimal covering set (libFuzzer -merge=1) of at most 40 files
# Environment: ATTEND_FUZZ_BUILD_DIR (default build/fuzz), CXX (default clang++).
set -eu
cd "$(dirname "$0")/../.."
root=$(pwd)
build=${ATTEND_FUZZ_BUILD_DIR:-build/fuzz}
case "$build" in /*) ;; *) build="$root/$build" ;; esac  # absolute: artifact paths use it
mode=fuzz
seconds=60
case "${1:-}" in
  --replay) mode=replay; shift ;;
  --make-corpus) mode=corpus; seconds=${2:?seconds}; shift 2 ;;
  '') ;;
  *) seconds=$1; shift ;;
esac
targets=${*:-"fuzz_dense fuzz_merge fuzz_convert fuzz_convert_baseline fuzz_block_sparse fuzz_gather
  fuzz_linear fuzz_sink"}
# One build goal, so that make compiles the targets side by side (goals run one after another).
goal=${*:-fuzzers}

cmake -S . -B "$build" -DCMAKE_CXX_COMPILER="${CXX:-clang++}" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -gline-tables-only" \
  -DATTEND_BUILD_FUZZERS=ON -DATTEND_ARCH_TESTS=OFF -DATTEND_BUILD_BENCH=OFF \
  -DATTEND_BUILD_EXAMPLES=OFF >/dev/null
cmake --build "$build" --target $goal -j2

bin="$build/tests/fuzz"
mkdir -p "$build/artifacts" "$build/work"
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"

corpus_of() {
  case "$1" in
    fuzz_convert_baseline) echo "tests/fuzz/corpus/fuzz_convert" ;;
    *) echo "tests/fuzz/corpus/$1" ;;
  esac
}

total=0
for t in $targets; do
  corpus=$(corpus_of "$t")
  log="$build/work/$t.log"
  if [ "$mode" = corpus ]; then
    scratch="$build/work/$t.new"
    rm -rf "$scratch" "$corpus.min"
    mkdir -p "$scratch" "$corpus.min"
    "$bin/$t" -max_total_time="$seconds" -max_len=512 -timeout=30 \
      -artifact_prefix="$build/artifacts/$t-" "$scratch" >"$log" 2>&1
    "$bin/$t" -merge=1 "$corpus.min" "$scratch" >>"$log" 2>&1
    # keep at most 40 files: the merge orders by coverage contribution only loosely, so take
    # the smallest ones, which libFuzzer's merge prefers anyway
    rm -rf "$corpus"
    mkdir -p "$corpus"
    ls -S -r "$corpus.min" | head -n 40 | while read -r f; do cp "$corpus.min/$f" "$corpus/"; done
    rm -rf "$corpus.min"
    echo "fuzz: $t: corpus regenerated with $(ls "$corpus" | wc -l) files"
    continue
  fi
  # Replay: every corpus file once.
  files=$(ls "$corpus" | wc -l)
  "$bin/$t" -runs=0 "$corpus" >"$log" 2>&1 || { cat "$log"; echo "fuzz: $t: corpus replay FAILED"; exit 1; }
  echo "fuzz: $t: replayed $files corpus files"
  [ "$mode" = replay ] && continue
  scratch="$build/work/$t.corpus"
  rm -rf "$scratch"
  mkdir -p "$scratch"
  cp "$corpus"/* "$scratch"/ 2>/dev/null || true
  start=$(date +%s)
  if ! "$bin/$t" -max_total_time="$seconds" -max_len=512 -timeout=30 -print_final_stats=1 \
       -artifact_prefix="$build/artifacts/$t-" "$scratch" >"$log" 2>&1; then
    tail -n 60 "$log"
    echo "fuzz: $t: FAILED (input saved under $build/artifacts/)"
    exit 1
  fi
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  echo "fuzz: $t: ${runs:-?} executions in $(( $(date +%s) - start )) s, corpus $(ls "$scratch" | wc -l) inputs"
  total=$(( total + ${runs:-0} ))
done
[ "$mode" = fuzz ] && echo "fuzz: $total executions in total"
exit 0
