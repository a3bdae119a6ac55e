#!/usr/bin/env bash
# The README's test command: set up if needed, then lint + types, the isolated-install
# check, and every package's unit tests plus the integration tests (one pytest run,
# Triton kernels under the CPU interpreter).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
tools/setup.sh
echo "== ruff + mypy"
tools/lint.sh
echo "== isolated install of each built wheel"
tools/build.sh >/dev/null
.venv/bin/python tools/check_isolated_install.py
echo "== unit + integration tests"
export TRITON_INTERPRET=1
TESTS=(shared/tests $(ls -d packages/*/tests) integration_tests)
.venv/bin/python -m pytest "${TESTS[@]}" -q -p no:cacheprovider --durations=15 "$@"
