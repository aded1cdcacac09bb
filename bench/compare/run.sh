#!/bin/sh
# attend next to PyTorch 2.x (SDPA flash CPU kernel and math attention) and the Eigen baseline on
# the suite's dense shapes, in one run at 2 threads:
#
#   bench/compare/run.sh [--with-p3] [--update-docs] [--shapes P1,D2] [--reps N] [--threads N]
#
# Makes a Python venv in build/compare-venv with numpy, matplotlib and a CPU build of torch (the
# first time only), builds attend_bench with the bench preset (or uses $ATTEND_BENCH_BIN), runs
# bench/compare/compare.py and writes bench/compare/results/compare.{md,png,json}; --update-docs
# also copies the table and the plot to docs/. The default run takes a few minutes after the
# installs; P3 (--with-p3) adds a few more.
set -eu
cd "$(dirname "$0")/../.."
venv=${ATTEND_COMPARE_VENV:-build/compare-venv}

if ! "$venv/bin/python" -c "import torch, numpy, matplotlib" 2>/dev/null; then
  echo "compare: installing numpy, matplotlib and torch into $venv (first run only)"
  if ! python3 -m venv "$venv" 2>/dev/null; then  # Debian's python3 needs python3-venv for it
    rm -rf "$venv"
    scripts/deps.sh python3-venv
    python3 -m venv "$venv"
  fi
  "$venv/bin/python" -m pip install -q --upgrade pip
  "$venv/bin/python" -m pip install -q numpy matplotlib
  # The CPU-only wheel from PyTorch's own index when it is reachable, else PyPI's torch.
  "$venv/bin/python" -m pip install -q --index-url https://download.pytorch.org/whl/cpu \
      --timeout 20 --retries 0 torch 2>/dev/null ||
    "$venv/bin/python" -m pip install -q torch
fi

if [ -z "${ATTEND_BENCH_BIN:-}" ]; then
  scripts/deps.sh
  [ -f build/bench/CMakeCache.txt ] || cmake --preset bench
  cmake --build --preset bench --target attend_bench
fi

exec "$venv/bin/python" bench/compare/compare.py "$@"
