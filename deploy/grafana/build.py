#!/usr/bin/env python3
"""Writes City Events' Grafana dashboards (deploy/grafana/*.json) from the panel lists below.

    python3 deploy/grafana/build.py          # write the dashboards
    python3 deploy/grafana/build.py --check  # exit 1 if a committed dashboard differs

Every dashboard has a `datasource` variable (any Prometheus); the per-service dashboards also
an `instance` variable. The series are Keel's (docs/metrics.md), the services' own, and the SLO
recording rules of deploy/prometheus/rules.yaml; crates/keel-slo/tests/dashboards.rs checks
every expression with promtool and every metric name against those.
"""
import json
import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
PROBES = 'unmatched|/health/.*|/healthz|/livez|/readyz'
SERVICES = ["gateway", "auth", "events", "joins", "notifier"]


def panel(title, exprs, unit="short", kind="timeseries", legend=None, description=""):
    """A panel; `exprs` is a list of (expr, legend) pairs."""
    return {"title": title, "type": kind, "unit": unit, "description": description,
            "targets": [{"expr": e, "legendFormat": l} for e, l in exprs]}


def row(title):
    return {"row": title}


def layout(items):
    """Grafana panels with grid positions: rows full width, panels two by two."""
    out, y, x, pid = [], 0, 0, 1
    for it in items:
        if "row" in it:
            if x:
                y, x = y + 8, 0
            out.append({"id": pid, "type": "row", "title": it["row"], "collapsed": False,
                        "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
            y += 1
        else:
            p = {
                "id": pid, "type": it["type"], "title": it["title"], "description": it["description"],
                "datasource": {"type": "prometheus", "uid": "${datasource}"},
                "gridPos": {"h": 8, "w": 12, "x": x, "y": y},
                "fieldConfig": {"defaults": {"unit": it["unit"]}, "overrides": []},
                "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True}},
                "targets": [{"refId": chr(ord("A") + i), "expr": t["expr"], "legendFormat": t["legendFormat"],
                             "datasource": {"type": "prometheus", "uid": "${datasource}"}}
                            for i, t in enumerate(it["targets"])],
            }
            out.append(p)
            x = 12 if x == 0 else 0
            if x == 0:
                y += 8
        pid += 1
    return out


def variables(service=None):
    vs = [{"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
           "current": {}, "hide": 0}]
    if service:
        vs.append({"name": "instance", "label": "Instance", "type": "query",
                   "datasource": {"type": "prometheus", "uid": "${datasource}"},
                   "query": {"query": f'label_values(up{{job="{service}"}}, instance)', "refId": "instance"},
                   "definition": f'label_values(up{{job="{service}"}}, instance)',
                   "includeAll": True, "multi": True, "allValue": ".*", "current": {}, "refresh": 2, "hide": 0})
    return vs


def dashboard(uid, title, items, service=None):
    return {
        "uid": uid, "title": title, "tags": ["keel", "cityevents"], "timezone": "browser",
        "schemaVersion": 39, "version": 1, "editable": True, "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {"list": variables(service)},
        "annotations": {"list": []},
        "panels": layout(items),
    }


def overview():
    api = f'route!~"{PROBES}"'
    return dashboard("cityevents-overview", "City Events: overview", [
        row("Traffic, errors and latency (RED) per service"),
        panel("Requests per second", [(f'sum by (job) (rate(http_server_requests_total{{{api}}}[$__rate_interval]))', "{{job}}")], "reqps"),
        panel("5xx ratio", [(f'sum by (job) (rate(http_server_requests_total{{{api},status=~"5.."}}[$__rate_interval])) / sum by (job) (rate(http_server_requests_total{{{api}}}[$__rate_interval]))', "{{job}}")], "percentunit"),
        panel("p99 latency", [(f'histogram_quantile(0.99, sum by (job, le) (rate(http_server_request_duration_seconds_bucket{{{api}}}[$__rate_interval])))', "{{job}}")], "s"),
        panel("Instances up", [("sum by (job) (up)", "{{job}}")]),
        row("Service level objectives"),
        panel("Error budget burn rate (1 h)", [("slo:sli_error:ratio_rate1h / on (service, slo) group_left () (1 - slo:objective:ratio)", "{{service}} {{slo}}")],
              description="1 spends the 30-day budget exactly in 30 days; the fast-burn alert pages at 14.4."),
        panel("Error ratio (6 h) against the budget", [("slo:sli_error:ratio_rate6h", "{{service}} {{slo}}"), ("1 - slo:objective:ratio", "budget {{service}} {{slo}}")], "percentunit"),
        row("Events pipeline"),
        panel("Outbox: oldest pending row", [("max by (job) (outbox_oldest_pending_age_seconds)", "{{job}}")], "s"),
        panel("Outbox: pending rows", [("max by (job) (outbox_pending)", "{{job}}")],
              description="Every instance counts the same outbox table: the largest count, not their sum."),
        panel("Consumer lag", [("max by (job, topic, group) (sum without (partition) (consumer_lag_messages))", "{{job}} {{topic}} {{group}}")]),
        panel("Dead letters (15 m)", [('sum by (job, topic) (increase(consumer_messages_total{outcome="dead"}[15m]))', "{{job}} {{topic}}")]),
        row("Dependencies"),
        panel("Database connections in use", [('sum by (job) (db_pool_connections{state="in_use"}) / sum by (job) (db_pool_max_connections)', "{{job}}")], "percentunit"),
        panel("Database acquire p99", [("histogram_quantile(0.99, sum by (job, le) (rate(db_pool_acquire_duration_seconds_bucket[$__rate_interval])))", "{{job}}")], "s"),
        panel("Circuit breakers (0 closed, 1 open, 2 half-open)", [("max by (job, name) (circuit_breaker_state)", "{{job}} {{name}}")]),
        panel("Health checks down", [("count by (job, check) (health_check_up == 0)", "{{job}} {{check}}")]),
    ])


def per_service(svc):
    sel = f'job="{svc}",instance=~"$instance"'
    api = f'{sel},route!~"{PROBES}"'
    items = [
        row("Requests"),
        panel("Requests per second by route", [(f'sum by (route) (rate(http_server_requests_total{{{api}}}[$__rate_interval]))', "{{route}}")], "reqps"),
        panel("Errors by route and status", [(f'sum by (route, status) (rate(http_server_requests_total{{{api},status=~"[45].."}}[$__rate_interval]))', "{{route}} {{status}}")], "reqps"),
        panel("Latency by route (p50, p99)", [
            (f'histogram_quantile(0.5, sum by (route, le) (rate(http_server_request_duration_seconds_bucket{{{api}}}[$__rate_interval])))', "p50 {{route}}"),
            (f'histogram_quantile(0.99, sum by (route, le) (rate(http_server_request_duration_seconds_bucket{{{api}}}[$__rate_interval])))', "p99 {{route}}")], "s"),
        panel("In flight and shed", [(f'sum(http_server_requests_in_flight{{{sel}}})', "in flight"),
                                     (f'sum(rate(http_server_requests_shed_total{{{sel}}}[$__rate_interval]))', "shed per second")]),
        row("Service level objectives"),
        panel("Error ratio by window", [(f'slo:sli_error:ratio_rate{w}{{service="{svc}"}}', f"{{{{slo}}}} {w}") for w in ["5m", "1h", "6h", "1d"]], "percentunit"),
        panel("Budget burn rate (1 h, 6 h)", [(f'slo:sli_error:ratio_rate{w}{{service="{svc}"}} / on (service, slo) group_left () (1 - slo:objective:ratio{{service="{svc}"}})', f"{{{{slo}}}} {w}") for w in ["1h", "6h"]]),
        row("Process and health"),
        panel("CPU (cores)", [(f'rate(process_cpu_seconds_total{{{sel}}}[$__rate_interval])', "{{instance}}")]),
        panel("Memory (resident)", [(f'process_resident_memory_bytes{{{sel}}}', "{{instance}}")], "bytes"),
        panel("Open file descriptors", [(f'process_open_fds{{{sel}}}', "{{instance}}"), (f'process_max_fds{{{sel}}}', "max {{instance}}")]),
        panel("Health checks (1 up, 0 down)", [(f'min by (check) (health_check_up{{{sel}}})', "{{check}}")]),
        panel("Connections refused (per-IP cap)", [(f'sum(rate(http_server_connections_refused_total{{{sel}}}[$__rate_interval]))', "refused per second")]),
        panel("Running build", [(f'count by (version, commit) (build_info{{{sel}}})', "{{version}} {{commit}}")]),
    ]
    if svc in ("auth", "events", "joins", "notifier"):
        items += [
            row("Database"),
            panel("Pool connections", [(f'sum by (state) (db_pool_connections{{{sel}}})', "{{state}}"), (f'sum(db_pool_max_connections{{{sel}}})', "max")]),
            panel("Acquire wait (p99) and timeouts", [
                (f'histogram_quantile(0.99, sum by (le) (rate(db_pool_acquire_duration_seconds_bucket{{{sel}}}[$__rate_interval])))', "p99 wait"),
                (f'sum(rate(db_pool_acquire_timeouts_total{{{sel}}}[$__rate_interval]))', "timeouts per second")], "s"),
            panel("Database errors by kind", [(f'sum by (kind) (rate(db_errors_total{{{sel}}}[$__rate_interval]))', "{{kind}}")]),
        ]
    if svc in ("events", "joins"):
        items += [
            row("Outbox"),
            panel("Pending rows and oldest age", [(f'max(outbox_pending{{{sel}}})', "pending"), (f'max(outbox_oldest_pending_age_seconds{{{sel}}})', "oldest (s)")]),
            panel("Published, failed, dead", [(f'sum(rate(outbox_published_total{{{sel}}}[$__rate_interval]))', "published"),
                                              (f'sum(rate(outbox_publish_failures_total{{{sel}}}[$__rate_interval]))', "failures"),
                                              (f'sum(increase(outbox_dead_total{{{sel}}}[$__rate_interval]))', "dead")]),
            panel("Relay paused and claim time (p99)", [(f'max(outbox_relay_paused{{{sel}}})', "paused"),
                                                         (f'histogram_quantile(0.99, sum by (le) (rate(outbox_claim_duration_seconds_bucket{{{sel}}}[$__rate_interval])))', "claim p99 (s)")]),
        ]
    if svc in ("joins", "notifier"):
        items += [
            row("Consumers"),
            panel("Messages by outcome", [(f'sum by (topic, outcome) (rate(consumer_messages_total{{{sel}}}[$__rate_interval]))', "{{topic}} {{outcome}}")]),
            panel("Lag and pauses", [(f'max by (topic, group) (sum without (partition) (consumer_lag_messages{{{sel}}}))', "lag {{topic}}"), (f'max by (topic, group) (consumer_paused{{{sel}}})', "paused {{topic}}")]),
            panel("Handle time (p99)", [(f'histogram_quantile(0.99, sum by (topic, le) (rate(consumer_handle_duration_seconds_bucket{{{sel}}}[$__rate_interval])))', "{{topic}}")], "s"),
        ]
    if svc == "gateway":
        items += [
            row("Upstreams, limits, Redis"),
            panel("Upstream requests by status", [(f'sum by (upstream, status) (rate(http_client_requests_total{{{sel}}}[$__rate_interval]))', "{{upstream}} {{status}}")], "reqps"),
            panel("Upstream latency (p99) and retries", [
                (f'histogram_quantile(0.99, sum by (upstream, le) (rate(http_client_request_duration_seconds_bucket{{{sel}}}[$__rate_interval])))', "p99 {{upstream}}"),
                (f'sum by (upstream, result) (rate(http_client_retries_total{{{sel}}}[$__rate_interval]))', "retries {{upstream}} {{result}}")]),
            panel("Circuit breakers", [(f'max by (name) (circuit_breaker_state{{{sel}}})', "{{name}}")]),
            panel("Rate-limit decisions", [(f'sum by (policy, decision) (rate(rate_limit_decisions_total{{{sel}}}[$__rate_interval]))', "{{policy}} {{decision}}")]),
            panel("Redis commands by outcome", [(f'sum by (outcome) (rate(redis_commands_total{{{sel}}}[$__rate_interval]))', "{{outcome}}")]),
            panel("Rate-limit backend", [(f'max by (policy, backend) (rate_limit_backend_active{{{sel}}})', "{{policy}} {{backend}}"),
                                         (f'sum by (policy) (rate(rate_limit_backend_errors_total{{{sel}}}[$__rate_interval]))', "errors {{policy}}")]),
        ]
    if svc == "auth":
        items += [row("Logins"),
                  panel("Login attempts by outcome", [(f'sum by (outcome) (rate(auth_login_attempts_total{{{sel}}}[$__rate_interval]))', "{{outcome}}")]),
                  panel("Logins with providers by outcome", [(f'sum by (provider, outcome) (rate(auth_oidc_sign_ins_total{{{sel}}}[$__rate_interval]))', "{{provider}} {{outcome}}")])]
    if svc in ("auth", "joins"):
        items += [row("Workers"),
                  panel("Runs by outcome", [(f'sum by (worker, outcome) (rate(worker_runs_total{{{sel}}}[$__rate_interval]))', "{{worker}} {{outcome}}")]),
                  panel("Since last success", [(f'time() - max by (worker) (worker_last_success_timestamp_seconds{{{sel}}} > 0)', "{{worker}}")], "s")]
    return dashboard(f"cityevents-{svc}", f"City Events: {svc}", items, svc)


def main():
    boards = {"overview.json": overview()}
    for s in SERVICES:
        boards[f"{s}.json"] = per_service(s)
    stale = []
    for name, board in boards.items():
        text = json.dumps(board, indent=2, ensure_ascii=False) + "\n"
        path = HERE / name
        if "--check" in sys.argv:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    if stale:
        print("stale dashboards (run python3 deploy/grafana/build.py): " + ", ".join(stale), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
