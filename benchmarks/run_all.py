"""Run every benchmark one after another, then gather their results into RESULTS.md.

    python benchmarks/run_all.py            # all benchmarks (tens of minutes on 2 CPU cores)
    python benchmarks/run_all.py attacks    # only bench_attacks.py
    python benchmarks/run_all.py --gather   # only rebuild RESULTS.md from results/*.md

Each ``bench_<name>.py`` writes ``benchmarks/results/<name>.md``; RESULTS.md is their
concatenation, in the order below. Run on a quiet machine: timings share the CPU.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ORDER = ["bounds", "region_search", "attacks", "interval", "model_ranking", "smoothed",
         "scale", "quantus", "campaign"]


def main(names: list[str]) -> int:
    gather_only = "--gather" in names
    names = [n for n in names if n != "--gather"]
    for name in [] if gather_only else names or ORDER:
        script = HERE / (f"bench_{name}.py" if name != "model_ranking" else "model_ranking.py")
        if not script.is_file():
            print(f"skip {name}: {script.name} not found")
            continue
        print(f"== {script.name}", flush=True)
        rc = subprocess.call([sys.executable, str(script)], cwd=HERE.parent)
        if rc:
            print(f"{script.name} failed with exit status {rc}")
            return rc
    parts = [(HERE / "results" / f"{n}.md") for n in ORDER]
    body = "\n\n".join(p.read_text().strip() for p in parts if p.is_file())
    (HERE / "RESULTS.md").write_text(
        "# Benchmark results\n\nGathered by `python benchmarks/run_all.py` from "
        "benchmarks/results/*.md; each section names the command and machine that produced "
        "it.\n\n" + body + "\n"
    )
    print(f"wrote {HERE / 'RESULTS.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
