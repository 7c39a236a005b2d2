#!/usr/bin/env python3
"""Checks the OTLP JSON that tools/otlp-sink received for one `tether connect` stream setup.

    check_traces.py TRACES.jsonl [--forbid SECRET_FILE...]

Exactly one trace must hold spans from all three processes (service.name tether, tether-relay,
tether-agent), parented as the stream setup runs:

    tether        connect ─┬─ dial
                           ├─ tls
                           └─ request
    tether-relay               └─ stream ─┬─ tls, token_check, device_wait, first_byte
                                          └─ agent_dial
    tether-agent                               └─ stream ── target_dial

No span may carry the contents of a --forbid file (stream tokens). Prints PASS/FAIL lines and
`traces: N passed, M failed`; exits non-zero on failure.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict


def spans(path: str) -> list[dict]:
    out = []
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            for rs in json.loads(line).get("resourceSpans", []):
                attrs = {a["key"]: a["value"].get("stringValue") for a in rs.get("resource", {}).get("attributes", [])}
                for ss in rs.get("scopeSpans", []):
                    for s in ss.get("spans", []):
                        out.append({**s, "service": attrs.get("service.name")})
    return out


def main() -> int:
    path, forbid = sys.argv[1], []
    if "--forbid" in sys.argv:
        forbid = [open(p).read().strip() for p in sys.argv[sys.argv.index("--forbid") + 1 :]]
    passed = failed = 0

    def check(ok: bool, what: str) -> bool:
        nonlocal passed, failed
        passed, failed = passed + ok, failed + (not ok)
        print(f"{'PASS' if ok else 'FAIL'}: {what}")
        return ok

    all_spans = spans(path)
    by_trace = defaultdict(list)
    for s in all_spans:
        by_trace[s["traceId"]].append(s)
    full = [t for t, ss in by_trace.items() if {"tether", "tether-relay", "tether-agent"} <= {s["service"] for s in ss}]
    check(len(full) == 1, f"one trace spans client, relay and agent ({len(full)} of {len(by_trace)} traces do)")
    if full:
        ss = by_trace[full[0]]

        def one(service: str, name: str) -> dict | None:
            found = [s for s in ss if s["service"] == service and s["name"] == name]
            return found[0] if len(found) == 1 else None

        def parent(child: tuple[str, str], of: tuple[str, str]) -> None:
            c, p = one(*child), one(*of)
            ok = c is not None and p is not None and c.get("parentSpanId") == p["spanId"]
            check(ok, f"{child[0]} {child[1]} is a child of {of[0]} {of[1]}")

        root = one("tether", "connect")
        check(root is not None and not root.get("parentSpanId"), "tether connect is the root span")
        for n in ("dial", "tls", "request"):
            parent(("tether", n), ("tether", "connect"))
        parent(("tether-relay", "stream"), ("tether", "request"))
        for n in ("tls", "token_check", "device_wait", "agent_dial", "first_byte"):
            parent(("tether-relay", n), ("tether-relay", "stream"))
        parent(("tether-agent", "stream"), ("tether-relay", "agent_dial"))
        parent(("tether-agent", "target_dial"), ("tether-agent", "stream"))
        print("trace " + full[0] + ":")
        t0 = min(int(s["startTimeUnixNano"]) for s in ss)
        for s in sorted(ss, key=lambda s: int(s["startTimeUnixNano"])):
            start = (int(s["startTimeUnixNano"]) - t0) / 1e6
            dur = (int(s["endTimeUnixNano"]) - int(s["startTimeUnixNano"])) / 1e6
            print(f"  {s['service']:<13} {s['name']:<12} +{start:9.3f} ms  {dur:10.3f} ms")
    raw = open(path).read()
    check(all(secret and secret not in raw for secret in forbid), "no stream token in any exported span")
    print(f"traces: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
