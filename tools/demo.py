"""Run every landed package's quickstart on its bundled default and print one summary table.

Each package exposes ``<import>.quickstart.run(output_dir) -> {"what", "figure", "files"}``;
each runs in its own process so one failure does not hide the others.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUNNER = """
import json, sys
from pathlib import Path
from {module}.quickstart import run
result = run(Path(sys.argv[1]))
print("@@RESULT@@" + json.dumps(result, default=str))
"""


def packages() -> list[tuple[str, str]]:
    out = []
    for folder in [ROOT / "shared", *sorted((ROOT / "packages").glob("*/"))]:
        data = tomllib.loads((folder / "pyproject.toml").read_text())
        module = data["tool"]["poetry"]["packages"][0]["include"]
        if (folder / "src" / module / "quickstart.py").is_file():
            out.append((data["project"]["name"], module))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=str(ROOT / "demo-output"), help="where outputs go")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args()
    out_root = Path(args.output)
    rows = []
    for name, module in packages():
        start = time.perf_counter()
        print(f"demo: running {name} quickstart ...", file=sys.stderr, flush=True)
        proc = subprocess.run(
            [sys.executable, "-c", RUNNER.format(module=module), str(out_root / name)],
            capture_output=True, text=True,
        )
        seconds = time.perf_counter() - start
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("@@RESULT@@")), None)
        if proc.returncode != 0 or line is None:
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            rows.append({"package": name, "what ran": "FAILED", "key figure": tail[:100], "output files": "", "s": seconds})
            continue
        result = json.loads(line[len("@@RESULT@@"):])
        files = [str(Path(f).relative_to(ROOT)) if Path(f).is_relative_to(ROOT) else f for f in result.get("files", [])]
        rows.append({"package": name, "what ran": result["what"], "key figure": result["figure"],
                     "output files": ", ".join(files), "s": seconds})
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        from slimkit.cli import format_table

        for row in rows:
            row["s"] = f"{row['s']:.0f}"
        print(format_table(rows, ["package", "what ran", "key figure", "output files", "s"]))
    return 1 if any(r["what ran"] == "FAILED" for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
