#!/usr/bin/env bash
# Refresh tools/constraints.txt from the current .venv (after a deliberate upgrade).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
{
  echo "# Tested versions for everything set-up installs (pip -c). Regenerate with tools/freeze.sh."
  "$ROOT/.venv/bin/python" -m pip freeze --exclude-editable | grep -v "@ file"
} > "$ROOT/tools/constraints.txt.tmp"
mv "$ROOT/tools/constraints.txt.tmp" "$ROOT/tools/constraints.txt"
