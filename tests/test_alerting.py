"""Operator alerting in deploy/: the Prometheus rules checked and unit-tested with the real
promtool (Debian's prometheus package; .ci/run installs it), rendered by the Helm chart
as a PrometheusRule, and the Grafana dashboard valid, its queries parsed by promtool.
Every rule and panel reads only metrics the project's models or Triton export."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy" / "triton-maskrcnn" / "files" / "maskrcnn-rules.yaml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "maskrcnn-rules.test.yaml"
DASHBOARD = ROOT / "deploy" / "grafana" / "maskrcnn-dashboard.json"
# Grafana's variables, as a query would see them, for promtool to parse the queries.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__range": "6h", "$instance": ".*"}
_METRIC = re.compile(r"\b([a-z_][a-z0-9_]*)\s*(?=\{|\[)")


def promtool() -> str:
    """promtool's path; a skip where it is not installed, except in CI (.ci/run installs
    it there, so a missing one is a failure, not a silent skip)."""
    found = shutil.which("promtool")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is not installed; .ci/run installs Debian's prometheus")
        pytest.skip("promtool not installed (apt-get install prometheus; CI installs it)")
    return found


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=120)


def rules() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def dashboard_queries() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    queries = []
    for panel in panels:
        for target in panel["targets"]:
            query = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                query = query.replace(variable, value)
            queries.append(query)
    return queries


def metrics_in(query: str) -> set[str]:
    words = {"by", "without", "on", "ignoring", "group_left", "group_right", "sum", "rate",
             "increase", "changes", "max", "avg", "topk", "and", "or", "unless"}
    return {m for m in _METRIC.findall(query) if m not in words}


def test_the_rules_pass_promtool_check_and_their_unit_tests():
    checked = run("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(rules())} rules found" in checked.stdout
    tested = run("test", "rules", str(RULE_TESTS))
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout
    tested_alerts = {t["alertname"] for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]
                     for t in case["alert_rule_test"]}
    assert tested_alerts == {r["alert"] for r in rules()}, "every alert has a unit test"


def test_promtool_catches_a_broken_rule_and_a_wrong_expectation(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text(RULES.read_text().replace("rate(pipeline_requests_total[5m])",
                                                "rate(pipeline_requests_total[5m]", 1))
    assert run("check", "rules", str(broken)).returncode != 0
    (tmp_path / "triton-maskrcnn" / "files").mkdir(parents=True)
    (tmp_path / "prometheus").mkdir()
    shutil.copy(RULES, tmp_path / "triton-maskrcnn" / "files")
    wrong = RULE_TESTS.read_text().replace("exp_labels: {severity: critical, instance: a}",
                                           "exp_labels: {severity: critical, instance: b}")
    (tmp_path / "prometheus" / RULE_TESTS.name).write_text(wrong)
    result = run("test", "rules", str(tmp_path / "prometheus" / RULE_TESTS.name))
    assert result.returncode != 0 and "FAILED" in result.stdout + result.stderr


def test_the_dashboard_is_valid_and_promtool_parses_its_queries(tmp_path):
    board = json.loads(DASHBOARD.read_text())
    assert board["uid"] and board["title"] and board["panels"]
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {v["name"] for v in board["templating"]["list"]}
    assert variables == {"datasource", "instance"}
    for panel in board["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert set(panel["gridPos"]) == {"x", "y", "w", "h"} and panel["targets"], panel["title"]
    # promtool parses PromQL when it checks rules: each query as a recording rule.
    as_rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": q} for i, q in enumerate(dashboard_queries())]}]}
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump(as_rules))
    checked = run("check", "rules", str(path))
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.server
def test_rules_and_dashboard_read_only_metrics_that_exist(server, exported):
    """The names in every rule and panel are families the project's Python models register
    (loaded through bls.testing) or metrics the real server exports (nv_*)."""
    from bls.contract.tensors import MODEL_NAME, MONITORING_NAME, PIPELINE_NAME
    from bls.testing import TritonDouble, model_config_dict
    from client.metrics import scrape

    known = {name for name, _ in scrape(server.metrics_url)}
    double = TritonDouble()
    with double.installed():
        for model in (PIPELINE_NAME, MONITORING_NAME, "preprocess", "postprocess"):
            loaded = double.load_model(exported.repository / model)
            if hasattr(loaded, "finalize"):
                loaded.finalize()
        runner = exported.repository / MODEL_NAME
        double.load_model(runner, model_config_dict(runner / "configs" / "embedded.pbtxt"))
    families = set(double.metrics)
    from bls.backend.metrics import START_METRIC

    for model in (PIPELINE_NAME, MONITORING_NAME, "preprocess", "postprocess", MODEL_NAME):
        assert double.metric(START_METRIC, model=model) > 1.7e9, f"{model} set no start time"
    histograms = {f"{name}_bucket" for name, f in double.metrics.items()
                  if f.kind == f.HISTOGRAM}
    nv = {n for n in known if n.startswith("nv_")} | {"nv_gpu_utilization"}  # GPU: no GPU here
    allowed = families | histograms | nv
    for query in [r["expr"] for r in rules()] + dashboard_queries():
        unknown = metrics_in(query) - allowed
        assert not unknown, f"{unknown} in {query!r}"
