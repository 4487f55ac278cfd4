"""Observability tier on the lab: node_exporter, Prometheus and Alertmanager on mon1 as
the inventory lays them out, every rule and dashboard expression evaluated against the
live Prometheus, the rules' unit tests with mon1's promtool, the TLS expiry export, an
alert that fires end to end, and the Grafana/ELK/Jaeger Compose project that is rendered
but not started (the lab supplies no image archives).

Prometheus (9090) and Alertmanager (9093) are published on 127.0.0.1 by the lab and
serve HTTPS only (TLS 1.3), read here verified against the internal CA. The alert test
runs a webhook receiver on the controller at the lab gateway (alertmanager_webhook_urls
in inventory/lab/group_vars/all/monitoring.yml), stops node_exporter on app2 and waits
for InstanceDown (for: 2m) to arrive, then resolves it.
Expectations (jobs, rule groups, image names, certificates) come from the lab inventory
and the roles' defaults, so a change there changes what is expected.
"""

from __future__ import annotations

import functools
import io
import json
import os
import re
import subprocess
import tarfile
import threading
import time
import urllib.parse
import urllib.request
from collections import Counter
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest
import yaml

from tests.e2e.conftest import (
    ALERTMANAGER_URL,
    INVENTORY,
    LAB_KEY,
    PROMETHEUS_URL,
    REPO,
    Lab,
    app_state,
    internal_tls,
    lab_group_vars,
    lab_secret,
    node_exporter_outage,
    order_journey,
    scrape,
    venv_tool,
)
from tests.e2e.test_edge import get

pytestmark = pytest.mark.e2e

PROM = PROMETHEUS_URL
AM = ALERTMANAGER_URL
RULES = sorted((REPO / "roles" / "prometheus" / "files" / "rules").glob("*.rules.yml"))
DASHBOARDS = sorted(
    (REPO / "roles" / "observability_stacks" / "files" / "dashboards").glob("*.json")
)
WEBHOOK_PORT = 19093
# Series that exist only after an event this lab does not produce on its own: a
# rollout that failed, a backup or restore drill run. Their rules are unit-tested by
# promtool instead; this test prints them as not evaluated here. (The TLS expiry
# series are evaluated: the lab lists its internal certificates.) The autoscaler's series
# exist only where app_autoscale is on, which the lab does not set yet (issue 22).
EVENT_ONLY = re.compile(
    r"^(zapora_rollout_failed|zapora_backup_.*|zapora_restore_drill_.*|zapora_autoscaler_.*)$"
)
PROMQL_WORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "sum",
    "max",
    "min",
    "avg",
    "count",
    "rate",
    "increase",
    "histogram_quantile",
    "time",
    "predict_linear",
    "max_over_time",
    "le",
    "bool",
    "offset",
    "vector",
    "changes",
}


def query(expr: str) -> list[dict[str, Any]]:
    url = f"{PROM}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=15, context=internal_tls()) as resp:
        body = json.load(resp)
    assert body["status"] == "success", body
    return list(body["data"]["result"])


def metric_names(expr: str) -> set[str]:
    """Metric names an expression selects (identifiers outside {...} and not PromQL words)."""
    bare = re.sub(r"\{[^}]*\}", " ", re.sub(r'"[^"]*"', '""', expr))
    bare = re.sub(r"\[[^\]]*\]", " ", bare)
    # label lists of by/on/without/ignoring/group_*
    bare = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", bare)
    return {
        w
        for w in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", bare)
        if w not in PROMQL_WORDS and not w.startswith("__") and not re.fullmatch(r"\d+[smhdwy]", w)
    }


def rule_exprs() -> list[tuple[str, str]]:
    out = []
    for path in RULES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                out.append((rule.get("alert") or rule["record"], rule["expr"]))
    return out


def dashboard_exprs() -> list[tuple[str, str]]:
    out = []
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel["targets"]:
                expr = re.sub(r"\$\w+", ".*", target["expr"].replace("$__rate_interval", "5m"))
                out.append((f"{path.stem}: {panel['title']}", expr))
    return out


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=15, context=internal_tls()) as resp:
        return json.load(resp)


@functools.cache
def _inventory_vars(host: str) -> dict[str, Any]:
    out = subprocess.run(
        [venv_tool("ansible-inventory"), "-i", str(INVENTORY), "--host", host],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    data: dict[str, Any] = json.loads(out.stdout)
    return data


def role_defaults(role: str) -> dict[str, Any]:
    """roles/<role>/defaults/main.yml as written (untemplated)."""
    defaults: dict[str, Any] = yaml.safe_load(
        (REPO / "roles" / role / "defaults" / "main.yml").read_text()
    )
    return defaults


def setting(role: str, name: str, host: str = "mon1") -> Any:
    """A role variable as the lab sets it for `host`: the inventory's value, else the
    role's default. Raw, not templated: only for variables whose values are literals."""
    lab_vars = _inventory_vars(host)
    if name in lab_vars:
        return lab_vars[name]
    return role_defaults(role)[name]


def resolved(name: str, default: Any, role: str | None = None) -> dict[str, Any]:
    """`name` templated for every lab host, as a play sees it (an ad-hoc debug: it runs
    on the controller, no host is contacted). `default` where the inventory leaves it
    unset, i.e. the role's default. An ad-hoc run loads no role's defaults: with `role`,
    that role's defaults other than `name` itself are passed in (as extra vars, templated
    when used), so an inventory value built on them (node_exporter_tls_certificates on
    node_exporter_tls_certificates_internal) resolves as in the play."""
    debug = ["-m", "ansible.builtin.debug", "-a", f"var={name}"]
    if role:
        defaults = role_defaults(role)
        defaults.pop(name, None)
        debug += ["-e", json.dumps(defaults)]
    out = subprocess.run(
        [venv_tool("ansible"), "all", "-i", str(INVENTORY), *debug],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=REPO,
        env={
            **os.environ,
            "ANSIBLE_STDOUT_CALLBACK": "json",
            "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1",
        },
    )
    # ansible.cfg's profile_tasks callback prints a line before and a recap after the JSON.
    start = out.stdout.index("\n{") + 1
    data, _ = json.JSONDecoder().raw_decode(out.stdout, start)
    values: dict[str, Any] = {}
    for host, result in data["plays"][0]["tasks"][0]["hosts"].items():
        value = result[name]
        values[host] = default if value == "VARIABLE IS NOT DEFINED!" else value
    return values


def ssh_with_input(lab: Lab, host: str, command: str, data: bytes) -> tuple[int, str]:
    """lab.ssh with `data` on the command's stdin (for a tarball; lab.ssh has no stdin)."""
    options = [
        "-i", str(LAB_KEY),
        "-o", "IdentitiesOnly=yes",
        "-o", "BatchMode=yes",
        "-o", "UserKnownHostsFile=/dev/null",
        "-o", "StrictHostKeyChecking=no",
        "-o", "LogLevel=ERROR",
        "-o", "ConnectTimeout=10",
    ]  # fmt: skip
    result = subprocess.run(
        ["ssh", *options, f"root@{lab.hosts[host].address}", command],
        input=data,
        capture_output=True,
        timeout=120,
        check=False,
    )
    return result.returncode, (result.stdout + result.stderr).decode()


def expected_scrape_jobs(lab: Lab) -> dict[str, set[str]]:
    """Static job -> hosts it scrapes, as prometheus.yml.j2 renders them for the lab: one
    job per entry whose inventory group has hosts ("all" = every host)."""
    jobs = setting("prometheus", "prometheus_scrape_jobs_default") + setting(
        "prometheus", "prometheus_scrape_jobs_custom"
    )
    out: dict[str, set[str]] = {}
    for job in jobs:
        hosts = set(lab.hosts) if job["group"] == "all" else set(lab.groups.get(job["group"], []))
        if hosts:
            out[job["job"]] = hosts
    return out


def test_node_exporter_answers_mon1(lab: Lab) -> None:
    """Every other host's node_exporter answers Prometheus' host (mon1) on :9100 over
    HTTPS verified by the internal CA, with node_exporter_build_info: the port as the
    scraper reaches it through the firewall."""
    others = [h for h in lab.hosts if h != "mon1"]
    urls = {f"https://{lab.hosts[h].address}:9100/metrics": h for h in others}
    bodies = scrape(lab, *urls)
    missing = [urls[u] for u, body in bodies.items() if "\nnode_exporter_build_info{" not in body]
    assert set(bodies) == set(urls) and not missing, f"no node_exporter_build_info from {missing}"


def test_prometheus_and_alertmanager_are_ready() -> None:
    """Both answer over HTTPS, verified against the internal CA from the controller."""
    for url in (f"{PROM}/-/ready", f"{AM}/-/ready"):
        with urllib.request.urlopen(url, timeout=10, context=internal_tls()) as resp:
            assert resp.status == 200, url


def test_prometheus_sends_alerts_to_alertmanager_over_https(lab: Lab) -> None:
    """Prometheus's alerting section names every Alertmanager of the monitoring group over
    HTTPS (Alertmanager serves nothing else; the alert test below proves the delivery)."""
    active = get_json(f"{PROM}/api/v1/alertmanagers")["data"]["activeAlertmanagers"]
    urls = sorted(a["url"] for a in active)
    want = sorted(
        f"https://{lab.hosts[h].address}:9093/api/v2/alerts" for h in lab.groups["monitoring"]
    )
    assert urls == want, urls


def test_scrape_jobs_are_the_inventorys(lab: Lab) -> None:
    """The active jobs are exactly the role's static jobs whose groups have hosts in the
    lab, plus the rollout's file_sd jobs; each static job scrapes exactly its group's
    hosts, each target labelled with its host (the alerts and dashboards key on `host`)."""
    static = expected_scrape_jobs(lab)
    file_sd = set(setting("prometheus", "prometheus_file_sd_jobs"))
    targets = get_json(f"{PROM}/api/v1/targets?state=active")["data"]["activeTargets"]
    jobs = {t["labels"]["job"] for t in targets}
    assert jobs == set(static) | file_sd, (
        f"unexpected {jobs - set(static) - file_sd}, missing {set(static) | file_sd - jobs}"
    )
    for job, hosts in static.items():
        labelled = sorted(
            t["labels"].get("host", "<none>") for t in targets if t["labels"]["job"] == job
        )
        assert labelled == sorted(hosts), f"job {job}: host labels {labelled}, want {sorted(hosts)}"
    # Jobs with `tls` and the file_sd jobs (the API's and worker's metrics ports) scrape
    # over HTTPS (those ports serve nothing else).
    tls_jobs = {
        j["job"]
        for j in setting("prometheus", "prometheus_scrape_jobs_default")
        + setting("prometheus", "prometheus_scrape_jobs_custom")
        if j.get("tls")
    } | file_sd
    schemes = {(t["labels"]["job"], t["scrapeUrl"].split(":")[0]) for t in targets}
    wrong = {
        (job, scheme)
        for job, scheme in schemes
        if scheme != ("https" if job in tls_jobs else "http")
    }
    assert not wrong, f"jobs scraped with the wrong scheme: {wrong}"
    print(f"{len(targets)} targets in jobs {sorted(jobs)}; over HTTPS: {sorted(tls_jobs)}")


def test_rule_groups_are_the_roles_and_evaluate() -> None:
    """/api/v1/rules holds exactly the groups of the rule files the role installs (and the
    inventory's own groups), each from its file, and no rule fails to evaluate."""
    files = setting("prometheus", "prometheus_rule_files")
    rules_dir = REPO / "roles" / "prometheus" / "files" / "rules"
    want = {
        group["name"]: f"/etc/prometheus/rules/{name}"
        for name in files
        for group in yaml.safe_load((rules_dir / name).read_text())["groups"]
    }
    for group in setting("prometheus", "prometheus_rule_groups_custom"):
        want[group["name"]] = "/etc/prometheus/rules/custom.rules.yml"
    groups = get_json(f"{PROM}/api/v1/rules")["data"]["groups"]
    assert {g["name"]: g["file"] for g in groups} == want
    broken = [
        (g["name"], r["name"], r.get("lastError"))
        for g in groups
        for r in g["rules"]
        if r["health"] == "err"
    ]
    assert not broken, f"rules with evaluation errors: {broken}"
    print(f"{len(groups)} groups, {sum(len(g['rules']) for g in groups)} rules, none in error")


def test_pseudo_filesystems_are_not_reported(lab: Lab) -> None:
    """The filesystem collector leaves out tmpfs, cgroup, proc and sysfs mounts, also those
    its mount-point exclusion does not catch (mon1's /tmp is a tmpfs)."""
    excluded_points = re.compile(setting("node_exporter", "node_exporter_mount_points_exclude"))
    kinds = "tmpfs,cgroup,cgroup2,proc,sysfs"
    caught_by_type_only = []
    for host in lab.hosts:
        mounts = lab.ssh(host, f"findmnt -rn -t {kinds} -o TARGET,FSTYPE").stdout.split("\n")
        caught_by_type_only += [
            (host, *m.split()) for m in mounts if m and not excluded_points.search(m.split()[0])
        ]
    # Without such a mount the check below could not fail.
    assert caught_by_type_only, f"no {kinds} mount outside {excluded_points.pattern} on any host"
    assert query("count(node_filesystem_size_bytes)"), "no filesystem series at all"
    reported = query('node_filesystem_size_bytes{fstype=~"tmpfs|cgroup2?|proc|sysfs"}')
    assert not reported, [r["metric"] for r in reported]
    print(f"mounts left out by their type alone: {caught_by_type_only}")


def test_api_file_sd_targets_carry_the_active_colour(lab: Lab) -> None:
    """The rollout's file_sd file puts each app host's API metrics listener in job
    zapora-api with colour=<the active colour>, and Prometheus scrapes it."""
    colours = {app_state(lab, h)["active"] for h in lab.groups["app"]}
    assert len(colours) == 1, f"the app hosts disagree on the active colour: {colours}"
    active = colours.pop()
    targets = get_json(f"{PROM}/api/v1/targets?state=active")["data"]["activeTargets"]
    api = [t for t in targets if t["labels"]["job"] == "zapora-api"]
    mine = [t for t in api if t["labels"].get("colour") == active]
    # Replica 1 of every host: no replica_slot label, always up.
    first = [t for t in mine if not t["labels"].get("replica_slot")]
    addresses = sorted(t["labels"]["instance"].rsplit(":", 1)[0] for t in first)
    assert addresses == sorted(lab.hosts[h].address for h in lab.groups["app"]), api
    down = [(t["scrapeUrl"], t["lastError"]) for t in first if t["health"] != "up"]
    assert not down, f"zapora-api targets of colour {active} not up: {down}"
    # Slots 2 .. app_replicas_max of every host (the lab's inventory): listed whether or
    # not the autoscaler runs a replica there; an empty one refuses the connection.
    slots = [t for t in mine if t["labels"].get("replica_slot")]
    per_slot = Counter(t["labels"]["replica_slot"] for t in slots)
    maximum = int(lab_group_vars("app").get("app_replicas_max", 1))
    expected = {str(slot): len(lab.groups["app"]) for slot in range(2, maximum + 1)}
    assert dict(per_slot) == expected, slots
    for t in slots:
        assert t["health"] == "up" or "connection refused" in t["lastError"], t
    print(f"replica slots: {[(t['scrapeUrl'], t['health']) for t in slots]}")


def test_alertmanager_routes_by_severity(lab: Lab) -> None:
    """amtool on mon1, against the installed configuration: critical alerts go to the
    receiver critical, the rest to default."""
    amtool = "amtool config routes test --config.file=/etc/prometheus/alertmanager.yml"
    critical = lab.ssh("mon1", f"{amtool} severity=critical alertname=X").stdout.strip()
    warning = lab.ssh("mon1", f"{amtool} severity=warning alertname=X").stdout.strip()
    assert (critical, warning) == ("critical", "default")


def test_amtool_on_mon1_reads_alertmanager_over_https(lab: Lab) -> None:
    """`amtool` with no flags on the monitoring host (the operator guide's silences): its
    defaults file (/etc/prometheus/amtool.yml) names Alertmanager's HTTPS URL and the CA."""
    silences = json.loads(lab.ssh("mon1", "amtool silence query -o json").stdout)
    assert isinstance(silences, list), silences


def test_rule_unit_tests_pass_with_mon1s_promtool(lab: Lab) -> None:
    """The rules' promtool unit tests (tests/rules runs them with the controller's 2.42)
    pass with Debian 13's promtool 2.53 on mon1: the version that loads them in the lab."""
    rules_dir = REPO / "roles" / "prometheus" / "files" / "rules"
    test_files = sorted((rules_dir / "tests").glob("*.test.yml"))
    assert test_files
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(rules_dir, arcname="rules")
    rc, out = ssh_with_input(
        lab,
        "mon1",
        'd=$(mktemp -d) && trap \'rm -rf "$d"\' EXIT && tar -xz -C "$d" && cd "$d/rules" && '
        "promtool --version 2>&1 | head -1 && promtool test rules tests/*.test.yml",
        buf.getvalue(),
    )
    print(out)
    assert rc == 0, out
    assert out.startswith("promtool, version 2.53."), out.splitlines()[:1]
    assert out.count("SUCCESS") == len(test_files), out


def test_tls_certificate_expiry_is_exported(lab: Lab) -> None:
    """Each certificate the lab lists (node_exporter_tls_certificates) is readable and its
    notAfter reaches Prometheus as read by openssl on its host; no other path is there."""
    listed = {
        (host, path)
        for host, paths in resolved(
            "node_exporter_tls_certificates", [], role="node_exporter"
        ).items()
        for path in paths
    }
    assert listed, "the lab lists no certificate: nothing to check"
    readable = {
        (r["metric"]["host"], r["metric"]["path"]): float(r["value"][1])
        for r in query("zapora_tls_certificate_readable")
    }
    assert readable == dict.fromkeys(listed, 1.0)
    left = {
        (r["metric"]["host"], r["metric"]["path"]): float(r["value"][1])
        for r in query("zapora_tls_certificate_not_after_timestamp_seconds - time()")
    }
    assert set(left) == listed
    for host in sorted({h for h, _ in listed}):
        paths = sorted(p for h, p in listed if h == host)
        script = "; ".join(
            f'date -d "$(openssl x509 -noout -enddate -in {p} | cut -d= -f2)" +%s' for p in paths
        )
        not_after = [int(x) for x in lab.ssh(host, script).stdout.split()]
        now = time.time()
        for path, end in zip(paths, not_after, strict=True):
            remaining = left[(host, path)]
            print(f"{host} {path}: {remaining / 86400:.1f} days left")
            assert remaining > 0, f"{host} {path} expired"
            # time() is the query's evaluation time, a second or two before `now`.
            assert abs(remaining - (end - now)) < 60, (host, path, remaining, end - now)


def test_every_target_is_up() -> None:
    # Not while the alert test (maybe in the other pytest process) holds app2's
    # node_exporter down.
    with (
        node_exporter_outage(exclusive=False),
        urllib.request.urlopen(
            f"{PROM}/api/v1/targets?state=active", timeout=15, context=internal_tls()
        ) as resp,
    ):
        targets = json.load(resp)["data"]["activeTargets"]
    jobs = {t["labels"]["job"] for t in targets}
    assert {"node", "prometheus", "alertmanager"} <= jobs, jobs
    # An API replica slot the autoscaler leaves empty (label replica_slot) is down by design:
    # it refuses the connection. Anything else down fails.
    empty = [
        t["scrapeUrl"]
        for t in targets
        if t["health"] != "up"
        and t["labels"].get("replica_slot")
        and "connection refused" in t["lastError"]
    ]
    down = [
        (t["labels"]["job"], t["scrapeUrl"], t["lastError"])
        for t in targets
        if t["health"] != "up" and t["scrapeUrl"] not in empty
    ]
    print(f"empty API replica slots (down by design): {empty}")
    assert not down, f"targets not up: {down}"


def test_edge_status_counter_reaches_prometheus() -> None:
    """Requests through edge1 (127.0.0.1:8443) are counted by mtail on edge1 and scraped
    by Prometheus (job nginx-log): the 2xx count is above zero within two scrapes."""
    statuses = [get("/health/live")[0] for _ in range(5)]
    assert 200 in statuses, f"no 200 through the edge (is the API deployed?): {statuses}"
    expr = 'sum by (host) (zapora_edge_http_responses_total{job="nginx-log", status=~"2.."})'
    deadline = time.monotonic() + 60
    while True:
        result = {r["metric"].get("host"): float(r["value"][1]) for r in query(expr)}
        if result.get("edge1", 0) > 0 or time.monotonic() > deadline:
            break
        time.sleep(5)
    print(f"edge 2xx count in Prometheus: {result}; statuses sent: {statuses}")
    assert result.get("edge1", 0) > 0, f"{expr} gave {result}"


@pytest.fixture(scope="module")
def business_events(lab: Lab) -> None:
    """The API's labelled counters (orders, revenue, audit events) have series only after
    their first event in the running process, and a deploy or rollback starts new
    processes: one register, login, menu and order journey through the edge first."""
    order_journey(lab)


@pytest.mark.parametrize("source", ["rules", "dashboards"])
@pytest.mark.usefixtures("business_events")
def test_every_selected_metric_has_series(source: str) -> None:
    exprs = rule_exprs() if source == "rules" else dashboard_exprs()
    names = sorted({n for _, e in exprs for n in metric_names(e)})
    recorded = {name for name, e in rule_exprs() if ":" in name}
    not_here = [n for n in names if EVENT_ONLY.match(n)]
    deadline = time.monotonic() + 60  # the journey's counters reach Prometheus next scrape
    while True:
        missing = [
            n for n in names if n not in not_here and n not in recorded and not query(f"count({n})")
        ]
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(5)
    print(
        f"{source}: {len(names) - len(not_here)} metric names evaluated against Prometheus;"
        f" not evaluated here (produced only by events the lab does not cause): {not_here}"
    )
    assert not missing, f"{source}: metrics with no series in the lab's Prometheus: {missing}"


@pytest.mark.parametrize("source", ["rules", "dashboards"])
def test_every_expression_evaluates(source: str) -> None:
    exprs = rule_exprs() if source == "rules" else dashboard_exprs()
    for name, expr in exprs:
        query(expr)  # raises on a PromQL error; empty results are fine for alert conditions


RECEIVED: list[dict[str, Any]] = []


class _Hook(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        RECEIVED.append(json.loads(body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def _alerts(
    status: str, alertname: str, host: str, receiver: str | None = None
) -> list[dict[str, Any]]:
    return [
        a
        for n in RECEIVED
        if n["status"] == status and receiver in (None, n["receiver"])
        for a in n["alerts"]
        if a["labels"].get("alertname") == alertname and a["labels"].get("host") == host
    ]


# Three minutes of waiting, in a process of its own: it holds no tier (its outage has
# its own lock, node_exporter_outage), so it keeps no other test waiting.
@pytest.mark.lab()
def test_instance_down_reaches_the_webhook(lab: Lab) -> None:
    server = HTTPServer((lab.gateway, WEBHOOK_PORT), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    host = "app2"
    try:
        with node_exporter_outage(exclusive=True):
            instance_down_fires_and_resolves(lab, host)
    finally:
        server.shutdown()


def instance_down_fires_and_resolves(lab: Lab, host: str) -> None:
    try:
        lab.ssh(host, "systemctl stop prometheus-node-exporter")
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not _alerts("firing", "InstanceDown", host):
            time.sleep(5)
        firing = _alerts("firing", "InstanceDown", host)
        assert firing, f"no firing InstanceDown for {host} within 240 s; received {RECEIVED}"
        assert firing[0]["labels"]["severity"] == "critical"
        assert firing[0]["annotations"]["runbook"] == "docs/alerts.md#instancedown"
        # Links in the notification lead to the HTTPS-only listeners, by the name their
        # certificates carry (the binaries' own guess says http://).
        assert firing[0]["generatorURL"].startswith("https://mon1:9090/"), firing[0]
        urls = {n["externalURL"].rstrip("/") for n in RECEIVED if n["status"] == "firing"}
        assert urls == {"https://mon1:9093"}, urls
        # Routed by severity: this alert came through the receiver critical.
        assert _alerts("firing", "InstanceDown", host, receiver="critical"), [
            n["receiver"] for n in RECEIVED
        ]
        # Prometheus' external labels travel with the alert (the lab sets site).
        site = setting("prometheus", "prometheus_external_labels").get("site")
        if site is not None:
            assert firing[0]["labels"].get("site") == site, firing[0]["labels"]
    finally:
        lab.ssh(host, "systemctl start prometheus-node-exporter")
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and not _alerts("resolved", "InstanceDown", host):
        time.sleep(5)
    assert _alerts("resolved", "InstanceDown", host), "InstanceDown did not resolve within 180 s"


STACKS_DIR = "/opt/zapora/observability"
ALL_PROFILES = "--profile grafana --profile elk --profile jaeger"


def test_stacks_not_started_say_why(lab: Lab) -> None:
    """The lab supplies no image archives, so no image is on mon1 and every stack's line in
    STATUS says NOT STARTED naming each of its images; "started" here would be a lie."""
    images = setting("observability_stacks", "observability_stacks_images")
    enabled = setting("observability_stacks", "observability_stacks_enabled")
    needed = yaml.safe_load(
        (REPO / "roles" / "observability_stacks" / "vars" / "main.yml").read_text()
    )["_observability_stacks_images_needed"]
    # The state this test expects follows from these two facts; if the lab ever supplies
    # archives, the expectation is "started" and this test must say so.
    assert not [n for n, i in images.items() if i.get("archive")], images
    refs = " ".join(images[n]["ref"] for n in images)
    inspect = "docker image inspect -f '{{.Id}}' $r 2>/dev/null || :"
    present = lab.ssh("mon1", f"for r in {refs}; do {inspect}; done").stdout.split()
    assert not present, f"images on mon1 although the lab loads none: {present}"
    status = lab.ssh("mon1", f"cat {STACKS_DIR}/STATUS").stdout
    print(status)
    lines = dict(line.split(": ", 1) for line in status.splitlines())
    assert sorted(lines) == sorted(enabled)
    for stack in enabled:
        assert lines[stack].startswith("NOT STARTED: "), f"{stack}: {lines[stack]}"
        for name in needed[stack]:
            why = f"image {images[name]['ref']} is not on this host (no archive given;"
            assert why in lines[stack], f"{stack}: {lines[stack]}"


def test_stacks_compose_project(lab: Lab) -> None:
    """The Compose project on mon1, rendered but not started: no container, the documented
    services, ports and secret handling, no secret in compose.yml, the dashboards."""
    run = f"cd {STACKS_DIR} && docker compose"
    assert lab.ssh("mon1", f"{run} ps --all --quiet").stdout.strip() == ""
    services = lab.ssh("mon1", f"{run} {ALL_PROFILES} config --services").stdout.split()
    assert sorted(services) == [
        "elasticsearch",
        "es-setup",
        "grafana",
        "jaeger",
        "kibana",
        "logstash",
    ]
    config = json.loads(lab.ssh("mon1", f"{run} {ALL_PROFILES} config --format json").stdout)
    svc = config["services"]
    assert sorted(p["target"] for p in svc["jaeger"]["ports"]) == [4317, 4318, 16686]
    assert [p["target"] for p in svc["logstash"]["ports"] if p["protocol"] == "udp"] == [12201]
    assert svc["elasticsearch"]["ports"][0]["host_ip"] == "127.0.0.1"
    grafana_env = svc["grafana"]["environment"]
    assert grafana_env["GF_SECURITY_ADMIN_PASSWORD__FILE"] == "/run/secrets/grafana_admin_password"
    # `config` inlines the env files, so the file on disk is what must hold no secret.
    compose = lab.ssh("mon1", f"cat {STACKS_DIR}/compose.yml").stdout
    for name in ("grafana_admin", "elastic", "kibana_system"):
        secret = lab_secret(name)
        assert len(secret) >= 16, f".lab/secrets/{name} is too short to search for"
        assert secret not in compose, f"the {name} password is in compose.yml"
    mode = lab.ssh("mon1", f"stat -c '%a %U' {STACKS_DIR}/secrets").stdout.split()
    assert mode == ["700", "root"]
    installed = lab.ssh("mon1", f"cd {STACKS_DIR}/grafana/dashboards && ls *.json").stdout.split()
    assert sorted(installed) == sorted(p.name for p in DASHBOARDS)
    assert len(installed) == 6, installed
