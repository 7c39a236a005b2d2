#!/usr/bin/env python3
"""Generates Tether's Grafana dashboards and Prometheus alert rules from one description.

Outputs (committed; `--check` fails when they differ from what this script writes, like the CRDs):

* charts/tether/dashboards/tether-fleet-overview.json   Fleet overview
* charts/tether/dashboards/tether-relay-detail.json     Relay detail (one relay pod, $relay)
* charts/tether/dashboards/tether-operator.json         Operator
* charts/tether/rules/tether.rules.yaml                 plain Prometheus rules file (promtool)
* charts/tether/rules/prometheusrule.yaml               the same groups as a PrometheusRule

Every query is written once here, so the dashboards, the alert rules and the Prometheus test
(tools/observability/check_queries.py, which imports this module) cannot disagree. Python
standard library only. Usage: generate.py [--check]
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "charts/tether/dashboards"
RULES = ROOT / "charts/tether/rules"

# Metrics that only a relay fleet (relay --kubernetes, issue #8) exports. A standalone relay has
# none of their series, so the Prometheus test only checks that queries using them parse.
FLEET_METRICS = (
    "tether_relay_forwarded_connections_total",
    "tether_relay_forwarded_bytes_total",
    "tether_relay_ring_members",
    "tether_relay_ring_changes_total",
    "tether_relay_forward_failures_total",
    "tether_relay_draining",
    "tether_relay_devices_moved_total",
)

# Label selectors. Relays and the operator are scraped with `namespace` and `pod` target labels
# (what the Prometheus Operator's ServiceMonitor/PodMonitor and the usual kubernetes_sd relabeling
# produce); no dashboard depends on the `job` name.
RELAYS = 'namespace="$namespace", pod=~"$relay"'
OPERATOR = 'namespace="$namespace"'


NOT_OK = 'result!="ok"'
TOKEN_RESULTS = 'result=~"token_.*|missing_token"'


def eq(label: str, value: str) -> str:
    return f'{label}="{value}"'


def rate(metric: str, sel: str, extra: str = "") -> str:
    inner = sel + (", " + extra if extra else "")
    return f"rate({metric}{{{inner}}}[$__rate_interval])"


def quantile(q: float, metric: str, sel: str, by: str = "") -> str:
    by_labels = "le" + (", " + by if by else "")
    return f"histogram_quantile({q}, sum by ({by_labels}) ({rate(metric + '_bucket', sel)}))"


def relay_process(metric: str, kind: str = "gauge") -> str:
    """A process_* metric of relay pods only: joined on the relays' build_info, so operator pods
    in the same namespace (or a custom "All" value) never leak into relay panels."""
    series = rate(metric, RELAYS) if kind == "counter" else f"{metric}{{{RELAYS}}}"
    return (
        f"sum by (pod) ({series} * on (namespace, pod) group_left() "
        f"max by (namespace, pod) (tether_relay_build_info{{{RELAYS}}}))"
    )


@dataclass
class Target:
    expr: str
    legend: str = ""


@dataclass
class Panel:
    title: str
    unit: str
    targets: list[Target]
    description: str = ""
    kind: str = "timeseries"  # or "stat"
    width: int = 12
    height: int = 8
    stack: bool = False
    throughput: str = ""  # direction label if this panel shows tether_relay_bytes_total rates


@dataclass
class Dashboard:
    uid: str
    title: str
    file: str
    description: str
    variables: list[dict]
    rows: list[tuple[str, list[Panel]]] = field(default_factory=list)


def datasource_var() -> dict:
    return {
        "name": "datasource",
        "label": "Data source",
        "type": "datasource",
        "query": "prometheus",
        "current": {},
        "hide": 0,
        "refresh": 1,
        "regex": "",
        "options": [],
    }


def query_var(name: str, label: str, query: str, multi: bool) -> dict:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "definition": query,
        "query": {"query": query, "refId": f"{name}-var"},
        "refresh": 2,  # on time range change: new pods appear without a reload
        "sort": 1,
        "multi": multi,
        "includeAll": multi,
        "current": {},
        "hide": 0,
        "options": [],
        "regex": "",
    }


NAMESPACE_VAR = query_var(
    "namespace", "Namespace", "label_values(tether_relay_build_info, namespace)", False
)
RELAYS_VAR = query_var(
    "relay", "Relay", 'label_values(tether_relay_build_info{namespace="$namespace"}, pod)', True
)
RELAY_VAR = query_var(
    "relay", "Relay", 'label_values(tether_relay_build_info{namespace="$namespace"}, pod)', False
)
OPERATOR_NAMESPACE_VAR = query_var(
    "namespace", "Namespace", "label_values(tether_operator_leader, namespace)", False
)


def throughput(direction: str, title: str) -> Panel:
    return Panel(
        title,
        "Bps",
        [
            Target(
                f"sum by (pod) ({rate('tether_relay_bytes_total', RELAYS, eq('direction', direction))})",
                "{{pod}}",
            )
        ],
        "Tunnel payload bytes per second through each relay (TLS overhead not included).",
        stack=True,
        throughput=direction,
    )


SETUP_LATENCY = Panel(
    "Stream setup latency",
    "s",
    [
        Target(quantile(q, "tether_relay_stream_setup_duration_seconds", RELAYS), f"p{int(q * 100)}")
        for q in (0.5, 0.95, 0.99)
    ],
    "From a service's CONNECT request to the relay's 200, successful setups only "
    "(includes waiting for the device and the agent's local dial).",
)

SETUP_RATE = Panel(
    "Stream setups by result",
    "ops",
    [Target(f"sum by (result) ({rate('tether_relay_stream_setups_total', RELAYS)})", "{{result}}")],
    "ok, or the refusal reason sent to the client in Tether-Error.",
    stack=True,
)

SETUP_FAILURES = Panel(
    "Setup failures by reason",
    "ops",
    [
        Target(
            f"sum by (result) ({rate('tether_relay_stream_setups_total', RELAYS, NOT_OK)})",
            "{{result}}",
        )
    ],
    "device_* reasons are on the device side (offline, refused, unreachable target); "
    "token_*, sni_*, bad_*, missing_token and stream_* on the service side.",
    stack=True,
)

HANDSHAKE_FAILURES = Panel(
    "Handshake failures by side and reason",
    "ops",
    [
        Target(
            f"sum by (side, reason) ({rate('tether_relay_handshake_failures_total', RELAYS)})",
            "{{side}} {{reason}}",
        )
    ],
    "Connections that failed before becoming a device session or a stream.",
    stack=True,
)

TOKEN_REFUSALS = Panel(
    "Token refusals by kind",
    "ops",
    [
        Target(
            f"sum by (result) ({rate('tether_relay_stream_setups_total', RELAYS, TOKEN_RESULTS)})",
            "{{result}}",
        )
    ],
    "Stream tokens refused: expired, not yet valid, bad signature, wrong audience, device or port.",
    stack=True,
)

FORWARDING = Panel(
    "Forwarded connections (fleet)",
    "ops",
    [
        Target(
            f"sum by (pod, role) ({rate('tether_relay_forwarded_connections_total', RELAYS)})",
            "{{pod}} {{role}}",
        )
    ],
    "Connections a relay passed to the device's owner (sent) or took from a peer (received).",
)

FORWARDING_SHARE = Panel(
    "Forwarding share (fleet)",
    "percentunit",
    [
        Target(
            f"sum({rate('tether_relay_forwarded_bytes_total', RELAYS)}) / "
            f"sum({rate('tether_relay_bytes_total', RELAYS)})",
            "forwarded / relayed bytes",
        )
    ],
    "Bytes that took the extra hop to the owning relay, relative to all tunnel bytes.",
    kind="stat",
    width=6,
)

RING = Panel(
    "Ring members and changes (fleet)",
    "short",
    [
        Target(f"max(tether_relay_ring_members{{{RELAYS}}})", "members"),
        Target(f"sum(increase(tether_relay_ring_changes_total{{{RELAYS}}}[$__rate_interval]))", "changes"),
        Target(f"sum(increase(tether_relay_devices_moved_total{{{RELAYS}}}[$__rate_interval]))", "devices moved"),
    ],
    "Ready members each relay sees, membership changes, and devices sent GOAWAY because another "
    "member owns them now.",
)

DRAINING = Panel(
    "Draining relays (fleet)",
    "short",
    [Target(f"sum(tether_relay_draining{{{RELAYS}}})", "draining")],
    "Relays that received SIGTERM and are draining (not ready).",
    kind="stat",
    width=6,
)

CPU = Panel(
    "Relay CPU",
    "percentunit",
    [Target(relay_process("process_cpu_seconds_total", "counter"), "{{pod}}")],
    "CPU time per second (1 = one core).",
)
MEMORY = Panel(
    "Relay memory (RSS)",
    "bytes",
    [Target(relay_process("process_resident_memory_bytes"), "{{pod}}")],
    "Resident set size of each relay process.",
)

FLEET = Dashboard(
    "tether-fleet-overview",
    "Tether / Fleet overview",
    "tether-fleet-overview.json",
    "Throughput, devices, streams, setups and failures across the relay fleet.",
    [datasource_var(), NAMESPACE_VAR, RELAYS_VAR],
    [
        (
            "Traffic",
            [
                throughput("service_to_device", "Throughput to devices"),
                throughput("device_to_service", "Throughput from devices"),
                Panel(
                    "Connected devices",
                    "short",
                    [Target(f"sum by (pod) (tether_relay_connected_devices{{{RELAYS}}})", "{{pod}}")],
                    "Devices with a live session, per relay.",
                    stack=True,
                ),
                Panel(
                    "Active streams",
                    "short",
                    [Target(f"sum by (pod) (tether_relay_active_streams{{{RELAYS}}})", "{{pod}}")],
                    "Tunnelled TCP connections currently spliced, per relay.",
                    stack=True,
                ),
            ],
        ),
        ("Stream setups", [SETUP_RATE, SETUP_LATENCY, SETUP_FAILURES, HANDSHAKE_FAILURES]),
        ("Fleet", [FORWARDING, RING, FORWARDING_SHARE, DRAINING]),
        ("Resources", [CPU, MEMORY]),
    ],
)

ONE = 'namespace="$namespace", pod="$relay"'

RELAY_DETAIL = Dashboard(
    "tether-relay-detail",
    "Tether / Relay detail",
    "tether-relay-detail.json",
    "One relay pod: its traffic, sessions, setups, refusals and resources.",
    [datasource_var(), NAMESPACE_VAR, RELAY_VAR],
    [
        (
            "Traffic",
            [
                Panel(
                    "Throughput by direction",
                    "Bps",
                    [Target(f"sum by (direction) ({rate('tether_relay_bytes_total', ONE)})", "{{direction}}")],
                    "Tunnel payload bytes per second.",
                ),
                Panel(
                    "Devices, streams, handshakes in progress",
                    "short",
                    [
                        Target(f"sum(tether_relay_connected_devices{{{ONE}}})", "connected devices"),
                        Target(f"sum(tether_relay_active_streams{{{ONE}}})", "active streams"),
                        Target(f"sum(tether_relay_pending_handshakes{{{ONE}}})", "pending handshakes"),
                    ],
                    "Pending handshakes near --max-pending-handshakes mean slow or silent clients.",
                ),
            ],
        ),
        (
            "Setups and refusals",
            [
                Panel(
                    "Stream setups by result",
                    "ops",
                    [Target(f"sum by (result) ({rate('tether_relay_stream_setups_total', ONE)})", "{{result}}")],
                    "ok, or the refusal reason.",
                    stack=True,
                ),
                Panel(
                    "Stream setup latency",
                    "s",
                    [
                        Target(quantile(q, "tether_relay_stream_setup_duration_seconds", ONE), f"p{int(q * 100)}")
                        for q in (0.5, 0.95, 0.99)
                    ],
                    "Successful setups only.",
                ),
                Panel(
                    "Token refusals by kind",
                    "ops",
                    [
                        Target(
                            f"sum by (result) ({rate('tether_relay_stream_setups_total', ONE, TOKEN_RESULTS)})",
                            "{{result}}",
                        )
                    ],
                    "Stream tokens this relay refused.",
                    stack=True,
                ),
                Panel(
                    "Handshake failures by side and reason",
                    "ops",
                    [
                        Target(
                            f"sum by (side, reason) ({rate('tether_relay_handshake_failures_total', ONE)})",
                            "{{side}} {{reason}}",
                        )
                    ],
                    "Failures before a session or stream existed.",
                    stack=True,
                ),
                Panel(
                    "Streams closed by the relay",
                    "ops",
                    [
                        Target(
                            f"sum by (reason) ({rate('tether_relay_streams_closed_by_relay_total', ONE)})",
                            "{{reason}}",
                        ),
                        Target(
                            f"sum({rate('tether_relay_device_sessions_replaced_total', ONE)})",
                            "device sessions replaced",
                        ),
                    ],
                    "Revocations, idle timeouts and shutdown cuts; device reconnects replacing a stale session.",
                ),
            ],
        ),
        (
            "Fleet",
            [
                Panel(
                    "Forwarding (fleet)",
                    "Bps",
                    [
                        Target(
                            f"sum by (direction) ({rate('tether_relay_forwarded_bytes_total', ONE)})",
                            "{{direction}}",
                        )
                    ],
                    "Raw bytes this relay forwarded to or from owning peers.",
                ),
                Panel(
                    "Forward failures (fleet)",
                    "ops",
                    [
                        Target(
                            f"sum by (reason) ({rate('tether_relay_forward_failures_total', ONE)})",
                            "{{reason}}",
                        )
                    ],
                    "Connections that could not be passed to their owner.",
                ),
                Panel(
                    "Draining (fleet)",
                    "short",
                    [Target(f"max(tether_relay_draining{{{ONE}}})", "draining")],
                    "1 while this relay drains after SIGTERM.",
                    kind="stat",
                    width=6,
                ),
                Panel(
                    "Version",
                    "none",
                    [Target(f"max by (version) (tether_relay_build_info{{{ONE}}})", "{{version}}")],
                    "The relay's build version (legend).",
                    kind="stat",
                    width=6,
                ),
            ],
        ),
        (
            "Resources",
            [
                Panel(
                    "CPU",
                    "percentunit",
                    [Target(f"sum({rate('process_cpu_seconds_total', ONE)})", "cpu")],
                    "CPU time per second (1 = one core).",
                    width=8,
                ),
                Panel(
                    "Memory (RSS)",
                    "bytes",
                    [Target(f"sum(process_resident_memory_bytes{{{ONE}}})", "rss")],
                    "Resident set size.",
                    width=8,
                ),
                Panel(
                    "Open file descriptors",
                    "short",
                    [
                        Target(f"sum(process_open_fds{{{ONE}}})", "open"),
                        Target(f"sum(process_max_fds{{{ONE}}})", "limit"),
                    ],
                    "Each device session and each stream holds sockets.",
                    width=8,
                ),
            ],
        ),
    ],
)

OPERATOR_DASH = Dashboard(
    "tether-operator",
    "Tether / Operator",
    "tether-operator.json",
    "Reconciles, errors, durations, leadership, objects by phase and certificate expiry.",
    [datasource_var(), OPERATOR_NAMESPACE_VAR],
    [
        (
            "Reconciles",
            [
                Panel(
                    "Reconciles by controller",
                    "ops",
                    [
                        Target(
                            f"sum by (controller) ({rate('tether_operator_reconciles_total', OPERATOR)})",
                            "{{controller}}",
                        )
                    ],
                    "Reconciles run per second.",
                    width=8,
                ),
                Panel(
                    "Reconcile errors",
                    "ops",
                    [
                        # `or ... * 0`: a zero line per controller while no error has happened
                        # (the counter has no series until its first error).
                        Target(
                            f"sum by (controller, reason) ({rate('tether_operator_reconcile_errors_total', OPERATOR)}) "
                            f"or sum by (controller) ({rate('tether_operator_reconciles_total', OPERATOR)}) * 0",
                            "{{controller}} {{reason}}",
                        )
                    ],
                    "Failed reconciles by the error's stable reason; retried with backoff.",
                    width=8,
                ),
                Panel(
                    "Reconcile duration p50 / p99",
                    "s",
                    [
                        Target(
                            quantile(q, "tether_operator_reconcile_duration_seconds", OPERATOR, "controller"),
                            "{{controller}} p" + str(int(q * 100)),
                        )
                        for q in (0.5, 0.99)
                    ],
                    "Per controller.",
                    width=8,
                ),
            ],
        ),
        (
            "Objects and trust",
            [
                Panel(
                    "Leader",
                    "short",
                    [Target(f"max by (pod) (tether_operator_leader{{{OPERATOR}}})", "{{pod}}")],
                    "1 on the replica holding the Lease; exactly one should.",
                    kind="stat",
                    width=6,
                ),
                Panel(
                    "DeviceStreams by phase",
                    "short",
                    [
                        Target(
                            f"sum by (phase) (tether_operator_device_streams{{{OPERATOR}}})",
                            "{{phase}}",
                        )
                    ],
                    "From the leader's watch cache.",
                    stack=True,
                    width=6,
                ),
                Panel(
                    "Devices by readiness",
                    "short",
                    [Target(f"sum by (ready) (tether_operator_devices{{{OPERATOR}}})", "ready={{ready}}")],
                    "Ready=True: credentials issued and a relay endpoint known.",
                    stack=True,
                    width=6,
                ),
                Panel(
                    "Time to expiry",
                    "s",
                    [
                        Target(
                            f"min(tether_operator_trust_anchor_expiry_timestamp_seconds{{{OPERATOR}}}) - time()",
                            "CA certificate",
                        ),
                        Target(
                            f"min(tether_operator_device_certificate_earliest_expiry_timestamp_seconds{{{OPERATOR}}}) - time()",
                            "earliest device certificate",
                        ),
                    ],
                    "Device certificates are renewed renewBeforeDays (30) before expiry; a value "
                    "below that means renewal is stuck.",
                    kind="stat",
                    width=6,
                ),
            ],
        ),
        (
            "Resources",
            [
                Panel(
                    "Operator CPU",
                    "percentunit",
                    [
                        Target(
                            f"sum by (pod) ({rate('process_cpu_seconds_total', OPERATOR)} * on (namespace, pod) "
                            f"group_left() max by (namespace, pod) (tether_operator_leader{{{OPERATOR}}} >= 0))",
                            "{{pod}}",
                        )
                    ],
                    "CPU time per second of each operator replica.",
                ),
                Panel(
                    "Operator memory (RSS)",
                    "bytes",
                    [
                        Target(
                            f"sum by (pod) (process_resident_memory_bytes{{{OPERATOR}}} * on (namespace, pod) "
                            f"group_left() max by (namespace, pod) (tether_operator_leader{{{OPERATOR}}} >= 0))",
                            "{{pod}}",
                        )
                    ],
                    "Resident set size of each operator replica (the watch caches live here).",
                ),
            ],
        ),
    ],
)

ALL_DASHBOARDS = [FLEET, RELAY_DETAIL, OPERATOR_DASH]


def panel_json(p: Panel, pid: int, x: int, y: int) -> dict:
    ds = {"type": "prometheus", "uid": "${datasource}"}
    targets = [
        {"refId": chr(ord("A") + i), "datasource": ds, "expr": t.expr, "legendFormat": t.legend, "range": True}
        for i, t in enumerate(p.targets)
    ]
    out = {
        "id": pid,
        "type": p.kind,
        "title": p.title,
        "description": p.description,
        "datasource": ds,
        "gridPos": {"h": p.height, "w": p.width, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": p.unit}, "overrides": []},
        "targets": targets,
    }
    if p.kind == "timeseries":
        out["fieldConfig"]["defaults"]["custom"] = {
            "drawStyle": "line",
            "lineWidth": 1,
            "fillOpacity": 10,
            "stacking": {"mode": "normal" if p.stack else "none", "group": "A"},
        }
        out["options"] = {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        }
    else:
        out["options"] = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}}
    return out


def dashboard_json(d: Dashboard) -> dict:
    panels, pid, y = [], 1, 0
    for title, row in d.rows:
        panels.append(
            {"id": pid, "type": "row", "title": title, "collapsed": False,
             "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []}
        )
        pid, y, x, row_h = pid + 1, y + 1, 0, 0
        for p in row:
            if x + p.width > 24:
                x, y, row_h = 0, y + row_h, 0
            panels.append(panel_json(p, pid, x, y))
            pid, x, row_h = pid + 1, x + p.width, max(row_h, p.height)
        y += row_h
    return {
        "uid": d.uid,
        "title": d.title,
        "description": d.description + " Generated by tools/observability/generate.py; edit that, not this file.",
        "tags": ["tether"],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-3h", "to": "now"},
        "timezone": "",
        "templating": {"list": d.variables},
        "annotations": {"list": []},
        "links": [
            {"type": "dashboards", "tags": ["tether"], "title": "Tether dashboards", "asDropdown": True}
        ],
        "panels": panels,
    }


# --------------------------------------------------------------------------------------------
# Alert rules. `series` is the query whose result the alert compares; the Prometheus test checks
# it returns data, since an alert that does not fire returns nothing by design.
# --------------------------------------------------------------------------------------------


@dataclass
class Alert:
    name: str
    series: str
    condition: str  # appended to `series` to make the alert expression
    duration: str
    severity: str
    summary: str
    description: str
    full: str = ""  # the whole expression, when it is not `(series) condition`

    @property
    def expr(self) -> str:
        if self.full:
            return self.full
        # Parenthesised: comparison operators bind tighter than `and`/`unless`.
        return f"({self.series}) {self.condition}" if self.condition else self.series


# Relays that are scraped and not draining (a relay without the draining gauge counts as not
# draining), per namespace.
READY_RELAYS = (
    "count by (namespace) ((max by (namespace, pod) (up) == 1 and on (namespace, pod) "
    "max by (namespace, pod) (max_over_time(tether_relay_build_info[1h]))) unless on (namespace, pod) "
    "(max by (namespace, pod) (tether_relay_draining) == 1))"
)

ALERTS = [
    Alert(
        "TetherRelayDown",
        "max by (namespace, pod) (up) and on (namespace, pod) "
        "max by (namespace, pod) (max_over_time(tether_relay_build_info[1h]))",
        "== 0",
        "2m",
        "warning",
        "Relay {{ $labels.namespace }}/{{ $labels.pod }} cannot be scraped",
        "Prometheus has failed to scrape relay {{ $labels.pod }} for 2 minutes: it is down, "
        "restarting or unreachable. Its devices reconnect to other members.",
    ),
    Alert(
        "TetherNoReadyRelays",
        READY_RELAYS,
        "",
        "1m",
        "critical",
        "No ready Tether relay in {{ $labels.namespace }}",
        "Relays were seen in the last hour but none is both up and not draining: no device can "
        "connect and no stream can be opened.",
        full=f"count by (namespace) (max_over_time(tether_relay_build_info[1h])) unless on (namespace) {READY_RELAYS}",
    ),
    Alert(
        "TetherStreamSetupFailureRatioHigh",
        "sum by (namespace) (rate(tether_relay_stream_setups_total{result!=\"ok\"}[10m])) / "
        "sum by (namespace) (rate(tether_relay_stream_setups_total[10m]))",
        "> 0.25",
        "10m",
        "warning",
        "More than 25% of stream setups fail in {{ $labels.namespace }}",
        "{{ $value | humanizePercentage }} of stream setups were refused over 10 minutes. "
        "See the Fleet overview's 'Setup failures by reason' (device_* = device side, token_* = client tokens).",
    ),
    Alert(
        "TetherTrustAnchorExpiringSoon",
        "min by (namespace, anchor) (tether_operator_trust_anchor_expiry_timestamp_seconds) - time()",
        "< 30 * 86400",
        "1h",
        "critical",
        "Tether {{ $labels.anchor }} in {{ $labels.namespace }} expires within 30 days",
        "The CA certificate expires in {{ $value | humanizeDuration }}. Every device and relay "
        "certificate it issued stops working then; rotate it (docs/operations.md).",
    ),
    Alert(
        "TetherDeviceCertificateExpiringSoon",
        "min by (namespace) (tether_operator_device_certificate_earliest_expiry_timestamp_seconds) - time()",
        "< 14 * 86400",
        "1h",
        "warning",
        "A Tether device certificate expires within 14 days",
        "The earliest device certificate expires in {{ $value | humanizeDuration }}, although the "
        "operator renews them 30 days ahead (renewBeforeDays): renewal is failing, see the "
        "operator's reconcile errors.",
    ),
    Alert(
        "TetherOperatorNotLeading",
        "max by (namespace) (tether_operator_leader)",
        "< 1",
        "5m",
        "critical",
        "No Tether operator replica holds the Lease in {{ $labels.namespace }}",
        "Operator replicas are running but none leads: nothing is reconciled (no new tokens, "
        "certificates or relay scaling).",
    ),
]


def rules_groups() -> list[dict]:
    return [
        {
            "name": "tether",
            "rules": [
                {
                    "alert": a.name,
                    "expr": a.expr,
                    "for": a.duration,
                    "labels": {"severity": a.severity},
                    "annotations": {"summary": a.summary, "description": a.description},
                }
                for a in ALERTS
            ],
        }
    ]


def yaml_scalar(v) -> str:
    # JSON strings are valid YAML double-quoted scalars: no YAML library needed.
    return json.dumps(v) if isinstance(v, str) else str(v)


def to_yaml(obj, indent: int = 0) -> str:
    pad = "  " * indent
    if isinstance(obj, dict):
        lines = []
        for k, v in obj.items():
            if isinstance(v, (dict, list)) and v:
                lines.append(f"{pad}{k}:\n{to_yaml(v, indent + 1)}")
            else:
                lines.append(f"{pad}{k}: {yaml_scalar(v) if not isinstance(v, (dict, list)) else json.dumps(v)}")
        return "\n".join(lines)
    if isinstance(obj, list):
        lines = []
        for v in obj:
            body = to_yaml(v, indent + 1).lstrip() if isinstance(v, (dict, list)) else yaml_scalar(v)
            lines.append(f"{pad}- {body}")
        return "\n".join(lines)
    return pad + yaml_scalar(obj)


HEADER = "# Generated by tools/observability/generate.py; edit that, not this file.\n"


def outputs() -> dict[Path, str]:
    out = {DASHBOARDS / d.file: json.dumps(dashboard_json(d), indent=2) + "\n" for d in ALL_DASHBOARDS}
    out[RULES / "tether.rules.yaml"] = HEADER + to_yaml({"groups": rules_groups()}) + "\n"
    prometheus_rule = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "tether", "labels": {"app.kubernetes.io/name": "tether"}},
        "spec": {"groups": rules_groups()},
    }
    out[RULES / "prometheusrule.yaml"] = HEADER + to_yaml(prometheus_rule) + "\n"
    return out


def main() -> int:
    check = "--check" in sys.argv[1:]
    stale = []
    for path, text in outputs().items():
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path.relative_to(ROOT)))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if stale:
        print("out of date (run tools/observability/generate.py): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
