#!/usr/bin/env python3
"""Structural tests of the generated dashboards and alert rules (standard library only).

    python3 -m unittest tools/observability/test_dashboards.py

Whether the queries return data is the Prometheus test's job (check_queries.py); this one checks
what Grafana needs to import them and what keeps them correct as the code changes: committed
output up to date, datasource/namespace/relay variables, a unit on every panel, `$__rate_interval`
in every rate, no overlapping panels, and no metric name the Rust code does not define.
"""

from __future__ import annotations

import json
import re
import sys
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import generate  # noqa: E402

ROOT = generate.ROOT
METRIC = re.compile(r"\b((?:tether|process)_[a-z_]+)\b")
RANGE = re.compile(r"\[([^\]]+)\]")


def defined_metrics() -> set[str]:
    """Metric names the Rust code registers (string literals), plus the fleet's and process_*."""
    names = set(generate.FLEET_METRICS)
    for crate in ("relay", "operator", "agent"):
        for f in (ROOT / crate / "src").rglob("*.rs"):
            names.update(re.findall(r'"((?:tether)_[a-z_]+)"', f.read_text()))
    names.update(
        {"process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds", "process_max_fds"}
    )
    return names


def series_metrics(expr: str) -> set[str]:
    out = set()
    for m in METRIC.findall(expr):
        for suffix in ("_bucket", "_count", "_sum"):
            if m.endswith(suffix) and m.removesuffix(suffix).endswith("_seconds"):
                m = m.removesuffix(suffix)
        out.add(m)
    return out


def load(d: generate.Dashboard) -> dict:
    return json.loads((generate.DASHBOARDS / d.file).read_text())


class Dashboards(unittest.TestCase):
    def test_committed_output_is_current(self):
        for path, text in generate.outputs().items():
            with self.subTest(path=str(path)):
                self.assertTrue(path.exists(), f"{path} missing: run tools/observability/generate.py")
                self.assertEqual(path.read_text(), text, f"{path} is stale: run tools/observability/generate.py")

    def test_variables(self):
        for d in generate.ALL_DASHBOARDS:
            j = load(d)
            names = [v["name"] for v in j["templating"]["list"]]
            self.assertEqual(names[0], "datasource", d.file)
            self.assertEqual(j["templating"]["list"][0]["type"], "datasource")
            self.assertIn("namespace", names, d.file)
            if d is not generate.OPERATOR_DASH:
                self.assertIn("relay", names, d.file)
            for v in j["templating"]["list"][1:]:
                self.assertEqual(v["datasource"]["uid"], "${datasource}")

    def test_panels(self):
        known = defined_metrics()
        for d in generate.ALL_DASHBOARDS:
            j = load(d)
            ids = [p["id"] for p in j["panels"]]
            self.assertEqual(len(ids), len(set(ids)), f"{d.file}: duplicate panel ids")
            cells: dict[tuple[int, int], int] = {}
            for p in j["panels"]:
                g = p["gridPos"]
                self.assertLessEqual(g["x"] + g["w"], 24, p["title"])
                for x in range(g["x"], g["x"] + g["w"]):
                    for y in range(g["y"], g["y"] + g["h"]):
                        self.assertNotIn((x, y), cells, f"{d.file}: {p['title']} overlaps panel {cells.get((x, y))}")
                        cells[(x, y)] = p["id"]
                if p["type"] == "row":
                    continue
                with self.subTest(dashboard=d.file, panel=p["title"]):
                    self.assertEqual(p["datasource"]["uid"], "${datasource}")
                    self.assertTrue(p["fieldConfig"]["defaults"].get("unit"), "panel without a unit")
                    self.assertTrue(p["targets"], "panel without queries")
                    for t in p["targets"]:
                        expr = t["expr"]
                        self.assertIn("$namespace", expr)
                        self.assertEqual(t["datasource"]["uid"], "${datasource}")
                        for r in RANGE.findall(expr):
                            self.assertEqual(r, "$__rate_interval", f"fixed range [{r}] in {expr}")
                        unknown = series_metrics(expr) - known
                        self.assertFalse(unknown, f"metrics not defined in the code: {unknown}")

    def test_rules(self):
        known = defined_metrics() | {"up"}
        text = (generate.RULES / "tether.rules.yaml").read_text()
        prom_rule = (generate.RULES / "prometheusrule.yaml").read_text()
        for a in generate.ALERTS:
            with self.subTest(alert=a.name):
                self.assertIn(json.dumps(a.expr), text)
                self.assertIn(json.dumps(a.expr), prom_rule)
                self.assertFalse(series_metrics(a.expr) - known)
                self.assertIn(a.severity, ("warning", "critical"))


if __name__ == "__main__":
    unittest.main()
