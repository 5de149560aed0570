"""charts/kiln rendered and linted by the real helm; the schema rejects bad values; manifests/ and the chart's
CRDs are up to date; the Dockerfiles pass hadolint."""

import json
import re

import pytest
import yaml

from conftest import ALL_FEATURES, CHART, ROOT, by_kind, run, template


def test_helm_lint_default_and_all_features(helm):
    run([helm, "lint", "--strict", CHART])
    run([helm, "lint", "--strict", CHART, *ALL_FEATURES])


def test_default_render_has_the_operator_and_no_monitoring_kinds(helm):
    kinds = by_kind(template(helm))
    for kind in ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "Service",
                 "Deployment", "ConfigMap"):
        assert kind in kinds, f"default render lacks a {kind}"
    # No monitoring.coreos.com API known to `helm template`: the prometheus-operator kinds are left out.
    for kind in ("ServiceMonitor", "PodMonitor", "PrometheusRule", "NetworkPolicy"):
        assert kind not in kinds, f"{kind} rendered without being asked for"


def test_monitoring_kinds_follow_the_cluster_api(helm):
    kinds = by_kind(template(helm, "--api-versions", "monitoring.coreos.com/v1"))
    assert {"ServiceMonitor", "PodMonitor", "PrometheusRule"} <= kinds.keys()
    off = by_kind(template(helm, "--api-versions", "monitoring.coreos.com/v1",
                           "--set", "monitoring.podMonitor.enabled=false",
                           "--set", "monitoring.prometheusRule.enabled=false"))
    assert "PodMonitor" not in off and "PrometheusRule" not in off and "ServiceMonitor" in off


def test_all_features_render(helm):
    kinds = by_kind(template(helm, *ALL_FEATURES))
    dep = kinds["Deployment"][0]
    assert dep["spec"]["replicas"] == 2
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["image"].endswith(":1.2.3") and c["imagePullPolicy"] == "Always"
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert pod["tolerations"] == [{"key": "dedicated", "operator": "Exists"}]
    policies = kinds["NetworkPolicy"]
    assert sorted(p["metadata"]["namespace"] for p in policies) == ["ai", "ml"]
    allowed = [f.get("namespaceSelector", {}).get("matchLabels", {}).get("kubernetes.io/metadata.name")
               for f in policies[0]["spec"]["ingress"][0]["from"]]
    assert allowed == ["kiln-system", "apps", "monitoring"]  # the operator's namespace first (GET /status)
    assert policies[0]["spec"]["ingress"][0]["ports"] == [{"protocol": "TCP", "port": 8080}]
    for kind in ("ServiceMonitor", "PodMonitor", "PrometheusRule"):
        assert kinds[kind][0]["metadata"]["labels"]["release"] == "prometheus"
    assert kinds["ConfigMap"][0]["metadata"]["namespace"] == "grafana"


def test_restricted_security_context(helm):
    dep = by_kind(template(helm))["Deployment"][0]
    pod = dep["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for c in pod["containers"]:
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]


def grants(rules):
    return {(g, r, v) for rule in rules for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}


def test_rbac_is_least_privilege(helm):
    kinds = by_kind(template(helm))
    rules = kinds["ClusterRole"][0]["rules"]
    granted = grants(rules)
    for rule in rules:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule["apiGroups"]
    forbidden = [("", "secrets"), ("", "configmaps"), ("", "nodes"), ("", "pods/exec"),
                 ("rbac.authorization.k8s.io", "clusterroles"), ("coordination.k8s.io", "leases")]
    for g, r in forbidden:
        assert not any(x[0] == g and x[1] == r for x in granted), f"ClusterRole grants {g}/{r}"
    assert ("kiln.dev", "inferenceservices/status", "patch") in granted
    assert ("kiln.dev", "inferenceservices/finalizers", "update") in granted
    assert not {v for g, r, v in granted if r == "inferenceservices"} - {"get", "list", "watch"}
    assert ("", "pods", "watch") in granted and ("", "pods", "patch") not in granted
    for g, r in (("apps", "deployments"), ("", "services"), ("", "persistentvolumeclaims"),
                 ("policy", "poddisruptionbudgets")):
        for verb in ("get", "create", "patch"):
            assert (g, r, verb) in granted, f"server-side apply of {r} needs {verb}"
    # Leases only in the release namespace, through a Role; reading and renewing only the operator's own.
    role = kinds["Role"][0]
    assert role["metadata"]["namespace"] == "kiln-system"
    assert role["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "resourceNames": ["kiln-operator"],
         "verbs": ["get", "update"]}]
    args = kinds["Deployment"][0]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args == ["run", "--lease-name=kiln-operator"]
    off = by_kind(template(helm, "--set", "operator.leaderElection=false"))
    assert "Role" not in off
    assert "--no-leader-election" in off["Deployment"][0]["spec"]["template"]["spec"]["containers"][0]["args"]


def test_rbac_matches_the_operators_own(helm):
    """operator/rbac.yaml is what the operator's integration tests run with; the chart grants the same
    (plus inferenceservices/finalizers, needed only under OwnerReferencesPermissionEnforcement)."""
    own = ROOT / "operator" / "rbac.yaml"
    if not own.exists():
        pytest.skip("operator/rbac.yaml is not on this branch yet (it comes with the operator)")
    docs = {d["kind"]: d for d in yaml.safe_load_all(own.read_text()) if d}
    kinds = by_kind(template(helm))
    chart_cluster = grants(kinds["ClusterRole"][0]["rules"]) - {("kiln.dev", "inferenceservices/finalizers", "update")}
    assert chart_cluster == grants(docs["ClusterRole"]["rules"])
    assert grants(kinds["Role"][0]["rules"]) == grants(docs["Role"]["rules"])


def test_prometheus_rule_is_the_rules_file_verbatim(helm):
    rule = by_kind(template(helm, "--set", "monitoring.force=true"))["PrometheusRule"][0]
    plain = yaml.safe_load((CHART / "rules" / "kiln.rules.yaml").read_text())
    assert rule["spec"]["groups"] == plain["groups"]


def test_dashboard_configmap_holds_the_dashboard(helm):
    cm = by_kind(template(helm))["ConfigMap"][0]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["kiln.json"]) == json.loads((CHART / "dashboards" / "kiln.json").read_text())


BAD_VALUES = [
    (["--set", "operator.replicas=-1"], "/operator/replicas"),
    (["--set", "operator.replicas=two"], "/operator/replicas"),
    (["--set", "operator.image.pullPolicy=Sometimes"], "/operator/image/pullPolicy"),
    (["--set", "operator.replicaz=2"], "replicaz"),
    (["--set", "operator.metricsPort=70000"], "/operator/metricsPort"),
    (["--set", "operator.resources.limits.memory=lots"], "/operator/resources/limits/memory"),
    (["--set", "monitoring.podMonitor.interval=often"], "/monitoring/podMonitor/interval"),
    (["--set", "networkPolicy.enabled=true"], "/networkPolicy/agentNamespaces"),
    (["--set", "networkPolicy.enabled=true", "--set", "networkPolicy.agentNamespaces={Bad_Name}"],
     "/networkPolicy/agentNamespaces/0"),
    (["--set", "monitoring.dashboard.labels.grafana_dashboard=1"], None),  # an int label value
    (["--set", "agent.nodeModelCache.path=/var/lib/../../etc"], "/agent/nodeModelCache/path"),
    (["--set", "agent.nodeModelCache.path=models"], "/agent/nodeModelCache/path"),
]


def test_the_node_model_cache_directory_reaches_the_operator(helm):
    def env(*args):
        dep = by_kind(template(helm, *args))["Deployment"][0]
        return {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}

    assert env()["KILN_NODE_CACHE_DIR"] == "/var/lib/kiln/models"
    assert env("--set", "agent.nodeModelCache.path=/data/kiln")["KILN_NODE_CACHE_DIR"] == "/data/kiln"


@pytest.mark.parametrize("args,path", BAD_VALUES, ids=[" ".join(a[1::2]) for a, _ in BAD_VALUES])
def test_schema_rejects_bad_values_with_the_path(helm, args, path):
    p = template(helm, *args, check=False)
    assert p.returncode != 0, f"helm accepted {args}"
    assert "values don't meet the specifications of the schema" in p.stderr, p.stderr
    if path:
        assert path in p.stderr, p.stderr


def test_network_policy_without_clients_fails_clearly(helm):
    p = template(helm, "--set", "networkPolicy.enabled=true", "--set", "networkPolicy.agentNamespaces={ai}",
                 check=False)
    assert p.returncode != 0 and "networkPolicy.allowedNamespaces" in p.stderr, p.stderr


def test_install_yaml_is_fresh():
    run([ROOT / "scripts" / "render-install.sh", "--check"])
    docs = [d for d in yaml.safe_load_all((ROOT / "manifests" / "install.yaml").read_text()) if d]
    kinds = {d["kind"] for d in docs}
    assert {"Namespace", "ServiceAccount", "ClusterRole", "Deployment"} <= kinds
    assert all(d["metadata"].get("namespace", "kiln-system") == "kiln-system" for d in docs)


def test_chart_crds_are_fresh():
    run([ROOT / "scripts" / "sync-chart-crds.sh", "--check"])


def test_sync_chart_crds_check_fails_when_stale(tmp_path):
    # A copy of the two folders and the script: a CRD missing from the chart must fail the check.
    (tmp_path / "scripts").mkdir()
    (tmp_path / "crds").mkdir()
    (tmp_path / "charts" / "kiln" / "crds").mkdir(parents=True)
    script = tmp_path / "scripts" / "sync-chart-crds.sh"
    script.write_text((ROOT / "scripts" / "sync-chart-crds.sh").read_text())
    script.chmod(0o755)
    (tmp_path / "crds" / "inferenceservices.yaml").write_text("kind: CustomResourceDefinition\n")
    assert run([script, "--check"], check=False).returncode == 1
    run([script])
    run([script, "--check"])
    (tmp_path / "crds" / "inferenceservices.yaml").write_text("kind: CustomResourceDefinition # changed\n")
    assert run([script, "--check"], check=False).returncode == 1


EXAMPLES = sorted((ROOT / "manifests" / "examples").glob("*.yaml"))


def test_examples_are_inference_services_with_the_spec_fields():
    assert len(EXAMPLES) >= 4
    vendors = set()
    for f in EXAMPLES:
        d = yaml.safe_load(f.read_text())
        assert d["apiVersion"] == "kiln.dev/v1alpha1" and d["kind"] == "InferenceService", f
        spec = d["spec"]
        assert re.match(r"^(hf|https|pvc|file)://", spec["model"]["uri"]), f
        if "preset" in spec and "context" not in spec:
            # A named golden recipe: the operator fills context, GPU and reasoning from the preset.
            assert re.match(r"^[a-z0-9][a-z0-9.-]*$", spec["preset"]), f
            continue
        assert spec["context"]["size"] > 0 and spec["gpu"]["vendor"] in ("amd", "nvidia", "cpu"), f
        assert spec["reasoning"] in ("off", "on"), f
        vendors.add(spec["gpu"]["vendor"])
    assert vendors == {"amd", "nvidia", "cpu"}
    golden = yaml.safe_load((ROOT / "manifests/examples/qwen3.6-27b-rx7900xtx.yaml").read_text())["spec"]
    assert golden["context"] == {"size": 131072, "min": 65536, "kvCacheType": "q4_0", "autoDownsize": True}
    assert golden["speculative"] == {"type": "mtp", "draftMax": 3}
    assert golden["gpu"] == {"vendor": "amd", "arch": "gfx1100", "count": 1} and golden["reasoning"] == "off"


def test_dockerfiles_pass_hadolint(hadolint):
    files = sorted((ROOT / "docker").glob("*.Dockerfile"))
    assert [f.name for f in files] == ["agent-cuda.Dockerfile", "agent-rocm.Dockerfile", "operator.Dockerfile"]
    run([hadolint, "--no-color", "--failure-threshold", "info", *files])
    for f in files:
        text = f.read_text()
        assert re.search(r"^USER 65532:65532$", text, re.M), f"{f.name} must run as non-root"
        assert len(re.findall(r"^FROM ", text, re.M)) >= 2, f"{f.name} must be multi-stage"
        for image in re.findall(r"^FROM (\S+)", text, re.M):
            assert image == "scratch" or re.search(r":[0-9$]", image), f"{f.name}: {image} is not pinned"


def test_hadolint_catches_a_bad_dockerfile(hadolint, tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu\nRUN apt-get install curl\n")
    p = run([hadolint, "--no-color", bad], check=False)
    assert p.returncode != 0 and "DL3006" in p.stdout and "DL3008" in p.stdout
