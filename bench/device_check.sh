#!/usr/bin/env bash
# The one call for the README's GPU table, on a machine with a GPU (and torch, for the official
# PyTorch SAM) but no package registry:
#
#   bash bench/device_check.sh [DIR] [--dry-run] [--stages ...] [--no-torch] [--force]
#
# Installs the wheels carried in .whl/ of this checkout (if any; or $DEVICE_CHECK_WHEELS;
# bench/README.md lists them and the commands that download them) into /tmp/site, puts it and
# this checkout on PYTHONPATH, then runs
# `python -m stablesam_jax.commands.device_check`, which writes device_check.json and
# device_check.md into DIR (default: $OUT, else ./device_check_out) and prints the table.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${OUT:-device_check_out}"
if [[ $# -gt 0 && "$1" != -* ]]; then
  out="$1"
  shift
fi
python="${PYTHON:-python3}"
site="${DEVICE_CHECK_SITE:-/tmp/site}"

shopt -s nullglob
wheels=("${DEVICE_CHECK_WHEELS:-$repo/.whl}"/*.whl)
if [[ ${#wheels[@]} -gt 0 ]]; then
  "$python" -m pip install --quiet --no-index --no-deps --upgrade --target "$site" "${wheels[@]}"
  export PYTHONPATH="$repo:$site${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
fi
# JAX takes 75% of GPU memory up front by default; leave the official PyTorch SAM room too.
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.6}"

# A package that is neither here nor carried stops the command at once with
# "ModuleNotFoundError: No module named ...": carry its wheel (bench/README.md).
exec "$python" -m stablesam_jax.commands.device_check --out "$out" "$@"
