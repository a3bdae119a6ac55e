#!/usr/bin/env bash
# Mutation testing of one package's core modules (not part of CI; see README "Mutation testing").
# Sets up if needed, installs the pinned mutmut on first use, then runs tools/mutate.py at low
# priority:  tools/mutate.sh PACKAGE [--modules a,b] [--max-children N] [--json FILE] ...
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
tools/setup.sh >/dev/null
if ! .venv/bin/python -c "import mutmut" 2>/dev/null; then
  echo "mutate: installing mutmut (pinned in tools/constraints.txt) into .venv" >&2
  .venv/bin/python -m pip --disable-pip-version-check -q install -c tools/constraints.txt mutmut
fi
exec nice -n "${MUTATE_NICE:-10}" .venv/bin/python tools/mutate.py "$@"
