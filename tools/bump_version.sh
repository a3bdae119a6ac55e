#!/usr/bin/env bash
# Bump one package's version with `poetry version` and open its CHANGELOG entry.
# usage: tools/bump_version.sh <package-folder> <patch|minor|major|X.Y.Z> "<one-line summary>"
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
[[ $# -eq 3 ]] || { echo "usage: tools/bump_version.sh <shared|packages/NAME> <patch|minor|major|X.Y.Z> \"summary\"" >&2; exit 2; }
DIR="$ROOT/$1"
[[ -f "$DIR/pyproject.toml" ]] || { echo "bump: error: no pyproject.toml in $1" >&2; exit 2; }
NEW="$(cd "$DIR" && "$ROOT/.venv/bin/poetry" version "$2" --short)"
CHANGELOG="$DIR/CHANGELOG.md"
[[ -f "$CHANGELOG" ]] || printf '# Changelog\n' > "$CHANGELOG"
python3 - "$CHANGELOG" "$NEW" "$3" <<'PY'
import sys, datetime
path, version, summary = sys.argv[1:]
text = open(path).read()
head, _, rest = text.partition("\n")
entry = f"\n## {version} ({datetime.date.today().isoformat()})\n\n- {summary}\n"
open(path + ".tmp", "w").write(head + "\n" + entry + rest)
import os; os.replace(path + ".tmp", path)
PY
echo "bump: $1 -> $NEW (CHANGELOG updated)"
if [[ "$1" == "shared" ]]; then
  echo "bump: note: siblings pin slimkit by range; update packages/*/pyproject.toml if $NEW leaves it" >&2
fi
