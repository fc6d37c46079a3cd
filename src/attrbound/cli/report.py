"""`attrbound report`: an offline HTML report (summary table, plots, gallery) from the rows of
`attrbound evaluate`.

Example::

    attrbound report runs/rows.jsonl --out runs/report    # writes runs/report/report.html
"""

from __future__ import annotations

import argparse

from attrbound.cli.common import check_device
from attrbound.report import write_report


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("rows", help="JSON-lines rows file written by attrbound evaluate")
    p.add_argument("--out", required=True, help="output folder (report.html and PNG files)")
    p.add_argument("--worst", type=int, default=8,
                   help="inputs in the gallery of worst cases (default 8; 0: no gallery)")
    p.add_argument("--device", default="cpu",
                   help="torch device the gallery's maps are recomputed on (default cpu)")


def run(args: argparse.Namespace) -> int:
    check_device(args.device)
    page = write_report(args.rows, args.out, worst=args.worst, device=args.device)
    print(f"report: {page}")
    return 0
