#!/usr/bin/env python3
"""Runs every dashboard query and every alert expression against a real Prometheus.

    check_queries.py --prometheus http://127.0.0.1:9090 --start UNIX --end UNIX \
        --namespace tether-system --relays relays-0,relays-1 \
        [--throughput-to-device BYTES] [--throughput-from-device BYTES]

For each panel target of each generated dashboard (template variables substituted as Grafana
would: `$relay` = one pod, or `(a|b)` for a multi-value "All"; `$__rate_interval` = 4 x the 1 s
scrape interval) it runs a range query over [start, end] and fails on an error (a parse error
included) or on an empty result. Queries that read only fleet metrics (FLEET_METRICS in
generate.py) are checked for errors but may be empty: standalone relays export none of those
series. Every alert expression must evaluate without error, and the series it compares must exist.

With --throughput-*, the Fleet overview's throughput panel, integrated over the range, must
match the bytes the relays counted within TOLERANCE (the rates are averages over sliding
windows; integrating them recovers the total only up to the windows' extrapolation at the edges).
Prints one line per query and `prometheus-queries: N passed, M failed`; exits non-zero on failure.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.parse
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import generate  # noqa: E402

SCRAPE_INTERVAL = 1  # seconds; scripts/e2e/prometheus.sh configures Prometheus so
RATE_INTERVAL = f"{4 * SCRAPE_INTERVAL}s"
# Measured 6.0-9.7% under in scripts/e2e/prometheus.sh (a 50 MiB scp takes about a second, so
# the whole transfer sits in a handful of 4 s rate windows and their edge extrapolation decides
# the integral); see docs/operations.md.
TOLERANCE = 0.15


def api(base: str, path: str, **params) -> dict:
    url = f"{base}/api/v1/{path}?{urllib.parse.urlencode(params)}"
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return json.load(r)
    except urllib.error.HTTPError as e:  # 400 with a JSON body for parse errors
        return json.load(e)


def substitute(expr: str, namespace: str, relays: list[str], multi: bool) -> str:
    relay = "(" + "|".join(relays) + ")" if multi else relays[0]
    return (
        expr.replace("$__rate_interval", RATE_INTERVAL)
        .replace("$namespace", namespace)
        .replace("$relay", relay)
    )


def fleet_only(expr: str) -> bool:
    """True when expr reads a fleet metric: standalone relays export none, and an operation with
    an absent operand is empty, so such a query can only be checked for errors here."""
    return any(f in expr for f in generate.FLEET_METRICS)


def integrate(result: list[dict], step: float) -> float:
    return sum(float(v) * step for series in result for _, v in series["values"] if v not in ("NaN", "+Inf"))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prometheus", required=True)
    ap.add_argument("--start", type=float, required=True)
    ap.add_argument("--end", type=float, required=True)
    ap.add_argument("--namespace", default="tether-system")
    ap.add_argument("--relays", default="relays-0,relays-1")
    ap.add_argument("--throughput-to-device", type=float)
    ap.add_argument("--throughput-from-device", type=float)
    args = ap.parse_args()
    relays = args.relays.split(",")
    passed = failed = 0

    def report(ok: bool, what: str, detail: str = "") -> None:
        nonlocal passed, failed
        passed, failed = passed + ok, failed + (not ok)
        print(f"{'PASS' if ok else 'FAIL'}: {what}{': ' + detail if detail else ''}")

    step = SCRAPE_INTERVAL
    throughput: dict[str, float] = {}
    for d in generate.ALL_DASHBOARDS:
        multi = any(v.get("multi") for v in d.variables if v["name"] == "relay")
        for _, row in d.rows:
            for panel in row:
                for t in panel.targets:
                    expr = substitute(t.expr, args.namespace, relays, multi)
                    r = api(args.prometheus, "query_range", query=expr, start=args.start, end=args.end, step=step)
                    what = f"{d.uid} / {panel.title} [{t.legend or 'A'}]"
                    if r.get("status") != "success":
                        report(False, what, f"{r.get('errorType')}: {r.get('error')} in {expr}")
                        continue
                    result = r["data"]["result"]
                    if not result and fleet_only(t.expr):
                        report(True, what, "parses; no series (fleet-only metric, standalone relays)")
                    elif not result:
                        report(False, what, f"no series for {expr}")
                    else:
                        report(True, what, f"{len(result)} series")
                    if panel.throughput and d is generate.FLEET:
                        # Integrated at a finer step than the scrapes: a transfer that takes a
                        # second or two falls into few rate windows, and the windows' alignment
                        # with the scrapes would otherwise decide the result.
                        fine = 0.25
                        r = api(args.prometheus, "query_range", query=expr, start=args.start, end=args.end, step=fine)
                        throughput[panel.throughput] = integrate(r["data"]["result"], fine)

    for a in generate.ALERTS:
        r = api(args.prometheus, "query", query=a.expr, time=args.end)
        report(r.get("status") == "success", f"alert {a.name} expression evaluates", r.get("error", ""))
        r = api(args.prometheus, "query", query=a.series, time=args.end)
        ok = r.get("status") == "success"
        n = len(r["data"]["result"]) if ok else 0
        if ok and n == 0 and fleet_only(a.series):
            report(True, f"alert {a.name} series", "parses; no series (fleet-only metric)")
        else:
            report(ok and n > 0, f"alert {a.name} series", f"{n} series" if ok else r.get("error", ""))

    rules = api(args.prometheus, "rules")
    loaded = {r["name"]: r for g in rules["data"]["groups"] for r in g["rules"]}
    for a in generate.ALERTS:
        r = loaded.get(a.name)
        report(r is not None and r.get("health") == "ok", f"rule {a.name} loaded and healthy",
               r.get("lastError", "") if r else "not loaded")

    for direction, expected in (
        ("service_to_device", args.throughput_to_device),
        ("device_to_service", args.throughput_from_device),
    ):
        if expected is None:
            continue
        got = throughput.get(direction, 0.0)
        err = abs(got - expected) / expected
        report(
            err <= TOLERANCE,
            f"throughput panel {direction} integrates to the bytes relayed",
            f"panel {got / 2**20:.2f} MiB vs counted {expected / 2**20:.2f} MiB ({err:.1%}, tolerance {TOLERANCE:.0%})",
        )

    print(f"prometheus-queries: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
