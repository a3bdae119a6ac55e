#!/usr/bin/env bash
# `poetry build` every package (slimkit first) into dist/.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
POETRY="$ROOT/.venv/bin/poetry"
[[ -x "$POETRY" ]] || { echo "build: error: poetry not found in .venv (run tools/setup.sh)" >&2; exit 2; }
rm -rf dist && mkdir -p dist
for p in shared packages/*/; do
  p="${p%/}"
  (cd "$p" && "$POETRY" build --quiet --output "$ROOT/dist" >/dev/null)
  echo "build: $p"
done
ls dist
