"""The Helm chart in deploy/: rendered by Helm's own engine (helm-python-sdk binds the Helm
v4 Go SDK; no helm binary or cluster needed), linted, and every manifest validated
against the Kubernetes API schemas of the oldest and newest supported versions
(kubernetes-validate bundles them; strict: an unknown field fails). The ServiceMonitor
and the PrometheusRule are Prometheus Operator CRDs those schemas lack: the one is checked
against the Service, the other against the rules file it renders."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from server.launcher import RUN_TRITON
from tests.test_container_mode import with_torch

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "deploy" / "triton-maskrcnn"
ADAPTER_VALUES = ROOT / "deploy" / "prometheus-adapter-values.yaml"
# The chart's kubeVersion floor and the newest schemas kubernetes-validate ships.
KUBE_VERSIONS = ("1.25", "1.30", "1.37")
CRDS = {("monitoring.coreos.com/v1", "ServiceMonitor"),
        ("monitoring.coreos.com/v1", "PrometheusRule")}

VARIANTS = {
    "defaults": {},
    "object-storage": {"modelRepository": {"source": "uri", "uri": "s3://models/maskrcnn/2026-11-25",
                                           "credentialsSecret": "s3-credentials"}},
    "fixed-replicas-hard-spread": {"autoscaling": {"enabled": False}, "replicaCount": 3,
                                   "podAntiAffinity": "hard", "podDisruptionBudget": {"enabled": False}},
    "service-monitor": {"metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "kps"}},
                                    "prometheusRule": {"enabled": True, "labels": {"release": "kps"}},
                                    "podAnnotations": False},
                        "modelRepository": {"volume": {"subPath": "releases/2026-11-25"}},
                        "imagePullSecrets": [{"name": "ngc"}], "server": {"extraArgs": ["--log-info=true"]}},
}


def render(values: dict | None = None) -> dict[tuple[str, str], dict]:
    with helm.Chart.load(str(CHART)) as chart:
        rendered = chart.render(values or {}, name="maskrcnn", namespace="serving")
    manifests = {}
    for path, text in rendered.items():
        if not path.endswith(".yaml"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                manifests[(doc["kind"], doc["metadata"]["name"])] = doc
    return manifests


def by_kind(manifests, kind):
    found = [m for (k, _), m in manifests.items() if k == kind]
    assert len(found) <= 1, kind
    return found[0] if found else None


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_manifest_is_valid_kubernetes(variant):
    manifests = render(VARIANTS[variant])
    assert by_kind(manifests, "Deployment") and by_kind(manifests, "Service")
    for (kind, name), manifest in manifests.items():
        if (manifest["apiVersion"], kind) in CRDS:
            continue
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(manifest, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                pytest.fail(f"{variant}: {kind}/{name} invalid for Kubernetes {version}: "
                            f"{'.'.join(map(str, e.path))}: {e.message}")


def test_an_invalid_manifest_is_caught():
    """The validation above can fail: a wrong type and an unknown field are reported."""
    deployment = by_kind(render(), "Deployment")
    deployment["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBE_VERSIONS[-1], strict=True)
    deployment = by_kind(render(), "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBE_VERSIONS[-1], strict=True)


def test_chart_lints_clean():
    report = helm.lint(str(CHART), strict=True, kube_version="v1.30.0")
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_pods_probes_gpus_spread_and_scraping():
    manifests = render()
    deployment, service = by_kind(manifests, "Deployment"), by_kind(manifests, "Service")
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"] == labels == service["spec"]["selector"]
    [container] = pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 8000, "grpc": 8001, "metrics": 8002}
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert container["startupProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    # Liveness asks pipeline_bls itself (Triton's own endpoints stay green with a dead
    # stub): the probe script from a ConfigMap of the chart, a copy of client/probe.py.
    liveness = container["livenessProbe"]
    assert liveness["exec"]["command"][:2] == ["python3", "/probe/probe.py"]
    deadline = float(liveness["exec"]["command"][-1])
    assert liveness["timeoutSeconds"] > deadline
    assert liveness["periodSeconds"] * liveness["failureThreshold"] + deadline <= 30
    probe_map = by_kind(manifests, "ConfigMap")
    assert probe_map["data"]["probe.py"].strip() == (ROOT / "client" / "probe.py").read_text().strip()
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["probe"]["configMap"]["name"] == probe_map["metadata"]["name"]
    assert {m["name"]: m["mountPath"] for m in container["volumeMounts"]}["probe"] == "/probe"
    for section in ("requests", "limits"):
        assert container["resources"][section]["nvidia.com/gpu"] == 1
    notes = pod["metadata"]["annotations"]
    assert notes["prometheus.io/scrape"] == "true" and int(notes["prometheus.io/port"]) == ports["metrics"]
    term = pod["spec"]["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"] == labels
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["dshm"]["mountPath"] == "/dev/shm" and mounts["model-repository"]["readOnly"]
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"
    assert {"name": "metrics", "port": 8002, "targetPort": "metrics"} in service["spec"]["ports"]
    hard = render(VARIANTS["fixed-replicas-hard-spread"])
    affinity = by_kind(hard, "Deployment")["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    assert affinity["requiredDuringSchedulingIgnoredDuringExecution"][0]["labelSelector"]["matchLabels"] == labels
    assert by_kind(hard, "Deployment")["spec"]["replicas"] == 3
    assert by_kind(hard, "HorizontalPodAutoscaler") is None


def test_server_args_match_run_triton(exported, tmp_path):
    """The pods run tritonserver as run_triton.sh's container mode does."""
    repo = with_torch(shutil.copytree(exported.repository, tmp_path / "repo"), "2.6.0")
    result = subprocess.run([str(RUN_TRITON), "--mode", "container", "--repository", str(repo),
                             "--dry-run"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    # Without an environment in the repository the server command is inside `bash -c`.
    tokens = [t for arg in shlex.split(result.stdout) for t in shlex.split(arg)]
    script_args = {a for a in tokens if a.startswith("--")
                   and a.split("=")[0] in ("--model-control-mode", "--exit-timeout-secs", "--backend-config")}
    [container] = by_kind(render(), "Deployment")["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["tritonserver"]
    assert script_args and script_args <= set(container["args"])
    assert "--model-repository=/models" in container["args"]
    uri = render(VARIANTS["object-storage"])
    [container] = by_kind(uri, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert "--model-repository=s3://models/maskrcnn/2026-11-25" in container["args"]
    assert container["envFrom"] == [{"secretRef": {"name": "s3-credentials"}}]
    assert "model-repository" not in {m["name"] for m in container["volumeMounts"]}


def test_rollout_never_drops_capacity_or_requests():
    deployment = by_kind(render(), "Deployment")
    strategy = deployment["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate" and strategy["rollingUpdate"]["maxUnavailable"] == 0
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    sleep = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
    exit_timeout = int(next(a for a in container["args"] if a.startswith("--exit-timeout-secs="))
                       .split("=")[1])
    # preStop, then Triton's wait for the requests in flight and the models' unload (each
    # pipeline_bls execute returns once its batch is answered), within the grace period.
    assert sleep > 0 and pod["terminationGracePeriodSeconds"] > sleep + exit_timeout
    # A new repository path changes the pod template, which is what rolls the pods.
    first = deployment["spec"]["template"]["metadata"]["annotations"]
    second = by_kind(render({"modelRepository": {"volume": {"subPath": "releases/v2"}}}), "Deployment")
    assert second["spec"]["template"]["metadata"]["annotations"] != first
    assert by_kind(render(), "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1


def test_autoscaler_scales_on_the_adapters_queue_time_metric():
    manifests = render()
    hpa, deployment = by_kind(manifests, "HorizontalPodAutoscaler"), by_kind(manifests, "Deployment")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": deployment["metadata"]["name"]}
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    [metric] = hpa["spec"]["metrics"]
    adapter = yaml.safe_load(ADAPTER_VALUES.read_text())
    [rule] = adapter["rules"]["custom"]
    assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"] == rule["name"]["as"]
    assert "nv_inference_queue_duration_us" in rule["seriesQuery"]
    assert "nv_inference_request_success" in rule["metricsQuery"]
    assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}


def test_service_monitor_selects_the_service_metrics_port():
    manifests = render(VARIANTS["service-monitor"])
    monitor, service = by_kind(manifests, "ServiceMonitor"), by_kind(manifests, "Service")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["metadata"]["labels"]["release"] == "kps"
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]
    assert "metrics" in {p["name"] for p in service["spec"]["ports"]}
    annotations = by_kind(manifests, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert "prometheus.io/scrape" not in annotations


@pytest.mark.parametrize("values, message", [
    ({"modelRepository": {"volume": {"claimName": ""}}}, "modelRepository.volume.claimName is required"),
    ({"modelRepository": {"source": "uri"}}, "modelRepository.uri is required"),
    ({"modelRepository": {"source": "ftp"}}, "source"),
    ({"modelRepository": {"source": "uri", "uri": "http://x/models"}}, "uri"),
    ({"autoscaling": {"minReplicas": 5, "maxReplicas": 2}}, r"maxReplicas \(2\) is below autoscaling.minReplicas \(5\)"),
    ({"shmSize": "2g"}, "shmSize"),
])
def test_bad_values_are_refused_naming_them(values, message):
    with pytest.raises(helm.HelmError, match=message):
        render(values)


def test_the_prometheusrule_is_the_rules_file():
    """Off by default; on, its spec is deploy/triton-maskrcnn/files/maskrcnn-rules.yaml as
    it is (the file promtool checks, tests/test_alerting.py), with the labels given."""
    assert by_kind(render(), "PrometheusRule") is None
    rule = by_kind(render(VARIANTS["service-monitor"]), "PrometheusRule")
    assert rule["spec"] == yaml.safe_load((CHART / "files" / "maskrcnn-rules.yaml").read_text())
    assert rule["metadata"]["labels"]["release"] == "kps"
    assert rule["metadata"]["name"] == by_kind(render(), "Deployment")["metadata"]["name"]
