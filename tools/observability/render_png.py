#!/usr/bin/env python3
"""Renders the Fleet overview's main panels from a real Prometheus to a PNG (matplotlib).

    render_png.py --prometheus http://127.0.0.1:9090 --start UNIX --end UNIX --out fleet.png

The queries are the dashboard's own (from generate.py, variables substituted as in
check_queries.py), so the picture shows what Grafana would draw from the same data. Grafana itself
is not run: its server's licence keeps it out of this repository's toolchain. Needs matplotlib
(`pip install matplotlib`); scripts/e2e/prometheus.sh calls this when PNG_OUT is set.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import check_queries  # noqa: E402
import generate  # noqa: E402

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PANELS = [
    "Throughput to devices",
    "Throughput from devices",
    "Connected devices",
    "Active streams",
    "Stream setups by result",
    "Stream setup latency",
    "Setup failures by reason",
    "Relay memory (RSS)",
]

SCALE = {"Bps": (2**20, "MiB/s"), "bytes": (2**20, "MiB"), "s": (1e-3, "ms"), "ops": (1, "1/s"), "short": (1, "")}


def legend(fmt: str, labels: dict) -> str:
    out = fmt
    for k, v in labels.items():
        out = out.replace("{{" + k + "}}", v)
    return out or "value"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prometheus", required=True)
    ap.add_argument("--start", type=float, required=True)
    ap.add_argument("--end", type=float, required=True)
    ap.add_argument("--namespace", default="tether-system")
    ap.add_argument("--relays", default="relays-0,relays-1")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    panels = {p.title: p for _, row in generate.FLEET.rows for p in row}
    fig, axes = plt.subplots(4, 2, figsize=(14, 13))
    for ax, title in zip(axes.flat, PANELS):
        p = panels[title]
        div, unit = SCALE.get(p.unit, (1, p.unit))
        for t in p.targets:
            expr = check_queries.substitute(t.expr, args.namespace, args.relays.split(","), True)
            r = check_queries.api(args.prometheus, "query_range", query=expr, start=args.start, end=args.end, step=1)
            for series in r.get("data", {}).get("result", []):
                xs = [datetime.fromtimestamp(float(ts), tz=timezone.utc) for ts, _ in series["values"]]
                ys = [float(v) / div if v not in ("NaN", "+Inf") else float("nan") for _, v in series["values"]]
                ax.plot(xs, ys, label=legend(t.legend, series["metric"]), linewidth=1.2)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(unit)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
        ax.xaxis.set_major_formatter(matplotlib.dates.DateFormatter("%H:%M:%S"))
        if ax.lines:
            ax.legend(fontsize=7, loc="upper left")
    fig.suptitle(
        "Tether / Fleet overview — rendered from the Prometheus of scripts/e2e/prometheus.sh "
        "(2 relays, ssh + scp + refused tokens)",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(args.out, dpi=80)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
