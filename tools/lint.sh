#!/usr/bin/env bash
# ruff on everything, mypy on every package's source.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
.venv/bin/ruff check .
SRCS=(shared/src $(ls -d packages/*/src))
.venv/bin/mypy "${SRCS[@]}"
