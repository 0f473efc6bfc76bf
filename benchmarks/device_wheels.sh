#!/usr/bin/env bash
# Wheels for benchmarks/device_check.py on a lent GPU machine (see its docstring).
#
# The device image's python3 (3.12, torch with CUDA, transformers, pytest, hypothesis, ...) lacks
# what marlhf imports from Gymnasium and Stable-Baselines3 (and tree-sitter, for the tree-sitter
# terminations), and it cannot reach a registry. Run this HERE, in the repository root, where pip
# works: it downloads those wheels, at the versions of this checkout's .venv, for CPython 3.12 on
# x86-64 into .whl/ (about 1.5 MB; ignored by git through .git/info/exclude), which the device
# call then carries (carry=[".whl"]).
#
# Usage: bash benchmarks/device_wheels.sh [DEST]   (DEST defaults to .whl)
set -euo pipefail

DEST="${1:-.whl}"
PY="${PYTHON:-.venv/bin/python}"
PACKAGES=(gymnasium farama-notifications stable-baselines3 tree-sitter tree-sitter-python)

pins=()
for pkg in "${PACKAGES[@]}"; do
    version=$("$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$pkg")
    pins+=("$pkg==$version")
done

mkdir -p "$DEST"
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 -d "$DEST" "${pins[@]}"

if [ "$DEST" = ".whl" ] && common=$(git rev-parse --git-common-dir 2>/dev/null); then
    mkdir -p "$common/info"
    grep -qxF "/.whl/" "$common/info/exclude" 2>/dev/null || echo "/.whl/" >>"$common/info/exclude"
fi
ls -l "$DEST"
echo "${pins[*]}"
