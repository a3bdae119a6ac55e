#!/usr/bin/env bash
# The README's demo command: set up if needed, run every package's quickstart, print the table.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
tools/setup.sh
exec .venv/bin/python tools/demo.py "$@"
