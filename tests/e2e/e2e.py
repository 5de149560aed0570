"""Kiln end to end on a real single-node Kubernetes (issue 10), steps 2 to 7.

tests/e2e/run.sh builds the binaries and images, brings the node up (scripts/k8s/node.sh), imports the images
and starts the model mirror; this part drives the cluster with helm and kubectl and talks to the result with
the official `openai` client:

2. `helm install` charts/kiln: the operator runs as a pod under the chart's service account and RBAC only.
3. The default model (SmolLM2-135M-Instruct Q4_1) comes from the mirror on the node (an https:// model.uri).
4. `kubectl apply` the tiny CPU example (manifests/examples/smollm2-cpu.yaml, patched copy: the mirror's
   URI); wait for status.phase Ready; the time from apply to the first answered request is printed.
5. Through the Service's ClusterIP: a chat answer, /metrics, the CR's effective context and endpoint; the
   restricted security context checked on the running processes (uid, capabilities, read-only root).
6. Edit context.size: the Deployment rolls, a new pod serves with the new context, status follows.
7. Delete the CR: every child is garbage-collected; `helm uninstall` leaves nothing of the release.

Any failure prints the operator's and the pods' logs and the events, then exits non-zero.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import openai
import yaml
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "manifests/examples/smollm2-cpu.yaml"
RELEASE = "kiln"
# The chart's names for release `kiln` (its fullname is the release name when that contains "kiln").
OPERATOR = "kiln-operator"
RELEASE_NS = "kiln-system"
NS = "kiln-e2e"
SERVICE_LABEL = "kiln.dev/inference-service"
QUESTION = "What is the capital of France? Answer in one word."  # as tests/api asks SmolLM2


class Failure(Exception):
    pass


def check(cond: bool, what: str) -> None:
    if not cond:
        raise Failure(what)


def log(msg: str) -> None:
    print(f"[e2e] {msg}", flush=True)


class Cluster:
    def __init__(self, tools: Path, kubeconfig: str, run_dir: Path):
        self.kubectl_bin = str(tools / "kubectl")
        self.helm_bin = str(tools / "helm")
        self.kubeconfig = kubeconfig
        self.run_dir = run_dir
        # helm's caches and settings of this run only, not the user's.
        self.helm_home = tempfile.mkdtemp(prefix="kiln-e2e-helm-")
        self.env = dict(os.environ)
        for what in ("cache", "config", "data"):
            self.env[f"HELM_{what.upper()}_HOME"] = f"{self.helm_home}/{what}"

    def _run(self, argv: list[str], stdin: str | None = None, check_rc: bool = True) -> str:
        p = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=300, env=self.env)
        if check_rc and p.returncode != 0:
            raise Failure(f"{' '.join(argv)} failed ({p.returncode}): {p.stderr.strip()}")
        if not check_rc:  # diagnostics: say why there is nothing
            return p.stdout + p.stderr
        return p.stdout

    def kubectl(self, *args: str, stdin: str | None = None, check_rc: bool = True) -> str:
        return self._run([self.kubectl_bin, "--kubeconfig", self.kubeconfig, *args], stdin, check_rc)

    def helm(self, *args: str) -> str:
        return self._run([self.helm_bin, "--kubeconfig", self.kubeconfig, *args])

    def get(self, *args: str) -> dict | None:
        out = self.kubectl("get", *args, "-o", "json", "--ignore-not-found")
        return json.loads(out) if out.strip() else None

    def items(self, *args: str) -> list[dict]:
        got = self.get(*args)
        return got["items"] if got else []


def wait_for(what: str, timeout_s: float, probe, interval_s: float = 1.0):
    """Polls `probe` until it returns something truthy; Failure names `what` and the last thing seen."""
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        try:
            got = probe()
        except Failure as e:
            got, last = None, str(e)
        else:
            if got:
                return got
        time.sleep(interval_s)
    raise Failure(f"{what}: not within {timeout_s:.0f} s (last: {last})")


# ---- step 2 -------------------------------------------------------------------------------------------------


def install_chart(c: Cluster, operator_image: str, agent_image: str, node_cache: Path) -> None:
    op_repo, op_tag = operator_image.rsplit(":", 1)
    ag_repo, ag_tag = agent_image.rsplit(":", 1)
    t0 = time.monotonic()
    c.helm(
        "install", RELEASE, str(REPO / "charts/kiln"), "--namespace", RELEASE_NS, "--create-namespace",
        "--set", f"operator.image.repository={op_repo}", "--set", f"operator.image.tag={op_tag}",
        "--set", "operator.image.pullPolicy=Never",
        "--set", f"agent.image.repository={ag_repo}", "--set", f"agent.image.tag={ag_tag}",
        "--set", "agent.image.pullPolicy=Never", "--set", f"agent.nodeModelCache.path={node_cache}",
    )  # fmt: skip

    def operator_ready():
        pods = c.items("pods", "-n", RELEASE_NS, "-l", "app.kubernetes.io/name=kiln-operator")
        return [p for p in pods if pod_ready(p)]

    pod = wait_for("the operator pod Ready", 120, operator_ready)[0]
    log(f"helm install: operator pod {pod['metadata']['name']} Ready in {time.monotonic() - t0:.1f} s")
    sa = pod["spec"]["serviceAccountName"]
    check(sa == OPERATOR, f"operator runs as service account {sa}")
    # The chart's RBAC and nothing more: the only bindings naming the operator's account are the chart's.
    bindings = c.items("clusterrolebindings") + c.items("rolebindings", "--all-namespaces")
    naming = sorted(
        b["metadata"]["name"]
        for b in bindings
        if any(s.get("kind") == "ServiceAccount" and s.get("name") == sa for s in b.get("subjects") or [])
    )
    check(
        naming == [OPERATOR, f"{OPERATOR}-leader-election"],
        f"bindings for {sa}: {naming}",
    )


def pod_ready(pod: dict) -> bool:
    conds = (pod.get("status") or {}).get("conditions") or []
    return pod["metadata"].get("deletionTimestamp") is None and any(
        x["type"] == "Ready" and x["status"] == "True" for x in conds
    )


# ---- steps 3 and 4 ------------------------------------------------------------------------------------------


def example_manifest(model_uri: str, model_sha256: str) -> dict:
    """The tiny CPU example with the mirror's URI. Its CPU request is lowered from 1 to 500m: the rolling
    update of step 6 starts a second pod beside the first, and two 1-CPU pods plus the operator do not fit
    the 2 CPUs of a CI machine (the rollout would wait forever for room)."""
    isvc = yaml.safe_load(EXAMPLE.read_text())
    check(isvc["spec"]["gpu"]["vendor"] == "cpu", f"{EXAMPLE} is not the CPU example")
    isvc["metadata"]["namespace"] = NS
    isvc["spec"]["model"]["uri"] = model_uri
    isvc["spec"]["model"]["sha256"] = model_sha256
    isvc["spec"]["resources"]["requests"]["cpu"] = "500m"
    # The node's model cache (the chart's agent.nodeModelCache.path), so the pod of step 6's rollout finds
    # the model on the node instead of downloading it again.
    isvc["spec"]["modelCache"] = {"type": "hostPath", "size": "1Gi"}
    return isvc


def chat(base_url: str, timeout_s: float = 60.0) -> str:
    client = openai.OpenAI(base_url=base_url, api_key="unused", timeout=timeout_s, max_retries=0)
    model = client.models.list().data[0].id
    r = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": QUESTION}], max_tokens=20, temperature=0
    )
    return r.choices[0].message.content or ""


def apply_and_wait(c: Cluster, isvc: dict) -> dict:
    name = isvc["metadata"]["name"]
    c.kubectl("create", "namespace", NS)
    t0 = time.monotonic()
    c.kubectl("apply", "-f", "-", stdin=json.dumps(isvc))
    log(f"kubectl apply InferenceService {NS}/{name}")
    times: dict[str, float] = {}
    first_answer = None
    progress: list[int] = []  # the download percentages status.message showed, in order
    deadline = t0 + 300
    while time.monotonic() < deadline and ("ready" not in times or first_answer is None):
        obj = c.get("inferenceservice", name, "-n", NS) or {}
        status = obj.get("status") or {}
        loading = re.fullmatch(r"Loading (\d+)% \(fetching the model\)", status.get("message") or "")
        if loading and (not progress or progress[-1] != int(loading[1])):
            progress.append(int(loading[1]))
            if len(progress) == 1:
                # What a user watching `kubectl get` sees (the Status column is status.message).
                log("kubectl get inferenceservice, during the download:\n"
                    + c.kubectl("get", "inferenceservice", name, "-n", NS).rstrip())
        if status.get("phase") == "Ready" and "ready" not in times:
            times["ready"] = time.monotonic() - t0
        svc = c.get("service", name, "-n", NS)
        if first_answer is None and svc:
            try:
                first_answer = chat(f"http://{svc['spec']['clusterIP']}/v1", timeout_s=10)
                times["answer"] = time.monotonic() - t0
            except (openai.APIError, IndexError):
                pass  # not up yet: connection refused, 503 while loading
        time.sleep(0.5)
    if "ready" not in times or first_answer is None:
        raise Failure(f"after 300 s: status {status}, first answer {first_answer!r}")
    log(f"status.phase Ready {times['ready']:.1f} s after kubectl apply")
    # The mirror sends the model slowly (tests/e2e/run.sh), so the operator polls the init container's
    # /status while it downloads: the status must have shown a percentage strictly between 0 and 100.
    log(f"download progress seen in status.message: {progress}%")
    check(any(0 < p < 100 for p in progress), f"no `Loading N%` with 0 < N < 100 in the status (saw {progress})")
    check(progress == sorted(progress), f"download progress went backwards: {progress}")
    log(f"TIME kubectl apply -> first answered request: {times['answer']:.1f} s (answer: {first_answer!r})")
    check("Paris" in first_answer, f"first answer {first_answer!r} lacks Paris")
    return times


def check_fetched_from_mirror(c: Cluster, name: str, model_file: str, mirror_log: Path) -> None:
    """The init container really ran `kiln-agent fetch` against the mirror."""
    pod = agent_pods(c, name)[0]
    inits = pod["status"].get("initContainerStatuses") or []
    check([i["name"] for i in inits] == ["fetch"], f"init containers {[i['name'] for i in inits]}")
    done = inits[0]["state"].get("terminated") or {}
    check(done.get("exitCode") == 0, f"fetch container state {inits[0]['state']}")
    args = next(x for x in pod["spec"]["initContainers"] if x["name"] == "fetch")["args"]
    check(args[0] == "fetch" and args[1].endswith(model_file), f"fetch args {args}")
    lines = [
        ln
        for ln in mirror_log.read_text().splitlines()
        if ln.startswith(pod["status"]["podIP"] + " ") and f"GET /{model_file} " in ln and '" 200 ' in ln
    ]
    check(bool(lines), f"no GET of {model_file} from pod {pod['status']['podIP']} in {mirror_log}")
    log(f"init container fetched from the mirror: {lines[-1].strip()}")


def check_downloaded_once(model_file: str, mirror_log: Path, node_cache: Path) -> None:
    """After the rollout: the node cache holds the model and the mirror sent it once, to the first pod."""
    gets = [ln for ln in mirror_log.read_text().splitlines() if f"GET /{model_file} " in ln]
    check(len(gets) == 1, f"the model was downloaded {len(gets)} times (want once per node): {gets}")
    cached = [p for p in node_cache.rglob("*") if p.is_file() and p.stat().st_size > 1 << 20]
    check(len(cached) == 1, f"node cache {node_cache} holds {[str(p) for p in cached]}")
    log(f"the rolled pod reused the node cache: one download in total, {cached[0]}")


def agent_pods(c: Cluster, name: str) -> list[dict]:
    return c.items("pods", "-n", NS, "-l", f"{SERVICE_LABEL}={name}")


# ---- step 5 -------------------------------------------------------------------------------------------------


def scrape(base: str) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as r:
        text = r.read().decode()
    samples = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def metric(samples: dict, name: str, **labels) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def check_serving(c: Cluster, name: str, ctx: int) -> None:
    svc = c.get("service", name, "-n", NS)
    cip = svc["spec"]["clusterIP"]
    answer = chat(f"http://{cip}/v1")
    check("Paris" in answer, f"answer {answer!r} lacks Paris")
    log(f"chat through ClusterIP {cip}: {answer!r}")
    samples = scrape(f"http://{cip}")
    eff = metric(samples, "kiln_context_size", kind="effective")
    check(eff == ctx, f"kiln_context_size{{kind=effective}} = {eff}, want {ctx}")
    ok_chats = sum(
        v
        for (n, lbls), v in samples.items()
        if n == "kiln_requests_total" and ("status", "200") in lbls and any("chat" in x[1] for x in lbls)
    )
    check(ok_chats >= 1, "kiln_requests_total counts no answered chat request")
    generated = metric(samples, "kiln_generated_tokens_total")
    check(generated is not None and generated > 0, f"kiln_generated_tokens_total = {generated}")
    log(f"/metrics through ClusterIP: effective context {eff:.0f}, {ok_chats:.0f} chats, {generated:.0f} tokens")

    obj = c.get("inferenceservice", name, "-n", NS)
    st = obj["status"]
    check(st.get("effectiveContextSize") == ctx, f"status.effectiveContextSize {st.get('effectiveContextSize')}")
    check(st.get("requestedContextSize") == ctx, f"status.requestedContextSize {st.get('requestedContextSize')}")
    want_endpoint = f"http://{name}.{NS}.svc/v1"
    check(st.get("endpoint") == want_endpoint, f"status.endpoint {st.get('endpoint')}, want {want_endpoint}")
    check(
        st.get("observedGeneration") == obj["metadata"]["generation"],
        f"status.observedGeneration {st.get('observedGeneration')} vs generation {obj['metadata']['generation']}",
    )
    ready = [x for x in st.get("conditions") or [] if x["type"] == "Ready"]
    check(bool(ready) and ready[0]["status"] == "True", f"Ready condition {ready}")
    log(f"status: phase {st['phase']}, effective context {ctx}, endpoint {st['endpoint']}")


def check_prometheus_scrapes(c: Cluster, name: str, prometheus_dir: Path, work: Path) -> None:
    """A real Prometheus (Debian's, scripts/prometheus.sh) scrapes the operator through the chart's metrics
    Service and the agent through its InferenceService's Service, with the chart's rules loaded unchanged:
    both targets are up, the operator reports one leader and its reconciles, the agent is ready, and every
    rule evaluates without error on real series."""
    op = c.get("service", f"{OPERATOR}-metrics", "-n", RELEASE_NS)
    op_target = f"{op['spec']['clusterIP']}:{op['spec']['ports'][0]['port']}"
    agent_target = f"{c.get('service', name, '-n', NS)['spec']['clusterIP']}:80"
    pod = agent_pods(c, name)[0]["metadata"]["name"]
    work.mkdir(parents=True, exist_ok=True)
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(REPO / "charts/kiln/rules/kiln.rules.yaml")],
        "scrape_configs": [
            {"job_name": "kiln-operator", "static_configs": [{"targets": [op_target]}]},
            {"job_name": "kiln-agent", "static_configs": [{"targets": [agent_target], "labels": {
                "namespace": NS, "inferenceservice": name, "pod": pod}}]},
        ],
    }  # fmt: skip
    (work / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = 19090
    log_file = open(work / "prometheus.log", "w")
    proc = subprocess.Popen(
        [prometheus_dir / "prometheus", "--config.file", work / "prometheus.yml", "--storage.tsdb.path",
         work / "data", "--web.listen-address", f"127.0.0.1:{port}"],
        stdout=log_file, stderr=subprocess.STDOUT, cwd=work,
    )  # fmt: skip

    def api(path: str, **params) -> dict | list:
        url = f"http://127.0.0.1:{port}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                body = json.loads(r.read())
        except OSError as e:  # URLError is an OSError: not up yet
            raise Failure(f"Prometheus {path}: {e}") from e
        if body.get("status") != "success":
            raise Failure(f"Prometheus {path} {params}: {body}")
        return body["data"]

    def query(expr: str) -> list:
        return api("query", query=expr)["result"]

    try:
        for job in ("kiln-operator", "kiln-agent"):
            wait_for(f"Prometheus scraping {job}", 60, lambda j=job: query(f'up{{job="{j}"}} == 1'))
        leader = wait_for("the operator's leader series", 30, lambda: query("kiln_operator_leader"))
        check([s["value"][1] for s in leader] == ["1"], f"kiln_operator_leader: {leader}")
        reconciles = wait_for("reconciles", 30, lambda: query("sum(kiln_operator_reconciles_total) > 0"))
        ready = wait_for("the agent's readiness", 30, lambda: query(f'kiln_ready{{pod="{pod}"}} == 1'))
        check(ready[0]["metric"]["inferenceservice"] == name, f"kiln_ready labels {ready[0]['metric']}")

        def evaluated():
            rules = [r for g in api("rules")["groups"] for r in g["rules"]]
            return rules if rules and all(r.get("lastEvaluation", "").startswith("20") for r in rules) else None

        rules = wait_for("every rule evaluated", 30, evaluated)
        bad = [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
        check(not bad, f"rules with errors: {bad}")
        firing = [r["name"] for r in rules if r.get("state") == "firing"]
        check(not firing, f"alerts firing on a healthy install: {firing}")
        log(f"Prometheus scraped the operator ({op_target}: leader 1, {float(reconciles[0]['value'][1]):.0f} "
            f"reconciles) and the agent ({agent_target}: kiln_ready 1); {len(rules)} rules evaluated, none "
            "failing or firing")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log_file.close()


def container_pid(c: Cluster, container_id: str) -> int:
    """The host PID of a running container's first process, from containerd (this machine is the node)."""
    cid = container_id.split("://", 1)[-1]
    out = subprocess.run(
        ["ctr", "-n", "k8s.io", "tasks", "ls"], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    for line in out.splitlines()[1:]:
        parts = line.split()
        if parts and parts[0] == cid and parts[2] == "RUNNING":
            return int(parts[1])
    raise Failure(f"container {cid} is not a running containerd task")


def check_restricted(
    c: Cluster, pod: dict, container: str, writable: list[str], read_only: list[str], host_dirs: dict | None = None
) -> None:
    """The restricted security context, on the real process: uid/gid, no capabilities, no new privileges,
    seccomp filtering, a read-only root, and writable paths only where the pod mounts an emptyDir
    (`writable`; `read_only`: emptyDirs mounted read-only, or the node directory `host_dirs` names)."""
    status = next(s for s in pod["status"]["containerStatuses"] if s["name"] == container)
    pid = container_pid(c, status["containerID"])
    proc = dict(
        ln.split(":\t", 1) for ln in Path(f"/proc/{pid}/status").read_text().splitlines() if ":\t" in ln
    )
    where = f"{pod['metadata']['name']}/{container} (pid {pid})"
    check(proc["Uid"].split() == ["65532"] * 4, f"{where}: Uid {proc['Uid']}")
    check(proc["Gid"].split() == ["65532"] * 4, f"{where}: Gid {proc['Gid']}")
    check(int(proc["CapEff"], 16) == 0 and int(proc["CapPrm"], 16) == 0, f"{where}: CapEff {proc['CapEff']}")
    check(proc["NoNewPrivs"].strip() == "1", f"{where}: NoNewPrivs {proc['NoNewPrivs']}")
    check(proc["Seccomp"].strip() == "2", f"{where}: Seccomp {proc['Seccomp']} (2 = filter)")
    mounts = {}
    for ln in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        f = ln.split()
        sep = f.index("-")
        mounts[f[4]] = (f[5].split(","), f[3], f[sep + 1])  # options, root in its filesystem, fs type
    check("ro" in mounts["/"][0], f"{where}: root mounted {mounts['/'][0]}")
    for path in writable + read_only:
        opts, root, _ = mounts.get(path, ([], "", ""))
        mode = "rw" if path in writable else "ro"
        expected = str((host_dirs or {}).get(path, "kubernetes.io~empty-dir"))
        check(mode in opts and expected in root, f"{where}: {path} is {mounts.get(path)}")
    virtual = ("proc", "sysfs", "tmpfs", "devtmpfs", "devpts", "mqueue", "cgroup", "cgroup2")
    rw = sorted(p for p, (opts, _, fstype) in mounts.items() if "rw" in opts and fstype not in virtual)
    # What else is writable: the files kubelet binds in (/etc/hosts, /dev/termination-log, ...) and the
    # emptyDirs. Everything else (the image's files) is read-only.
    kubelet_files = ("/etc/hosts", "/dev/termination-log", "/etc/hostname", "/etc/resolv.conf")
    extra = [p for p in rw if p not in writable and p not in kubelet_files]
    check(not extra, f"{where}: writable mounts besides the emptyDirs: {extra}")
    log(f"{where}: uid/gid 65532, no capabilities, no_new_privs, seccomp, root ro, emptyDirs rw {writable} ro {read_only}")


# ---- step 6 -------------------------------------------------------------------------------------------------


def edit_context(c: Cluster, name: str, new_ctx: int) -> None:
    old_pods = {p["metadata"]["name"] for p in agent_pods(c, name)}
    c.kubectl("patch", "inferenceservice", name, "-n", NS, "--type=merge",
              "-p", json.dumps({"spec": {"context": {"size": new_ctx}}}))  # fmt: skip
    t0 = time.monotonic()
    log(f"patched context.size to {new_ctx}")

    def rolled():
        dep = c.get("deployment", name, "-n", NS)
        args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
        if args[args.index("--ctx") + 1] != str(new_ctx):
            raise Failure(f"Deployment args still {args}")
        pods = agent_pods(c, name)
        names = {p["metadata"]["name"] for p in pods}
        if names & old_pods:
            raise Failure(f"old pods still there: {sorted(names & old_pods)}")
        if len(pods) != 1 or not pod_ready(pods[0]):
            raise Failure(f"pods {sorted(names)}")
        obj = c.get("inferenceservice", name, "-n", NS)
        st = obj.get("status") or {}
        if st.get("observedGeneration") != obj["metadata"]["generation"] or st.get("phase") != "Ready":
            raise Failure(f"status {st.get('phase')} observedGeneration {st.get('observedGeneration')}")
        if st.get("effectiveContextSize") != new_ctx:
            raise Failure(f"status.effectiveContextSize {st.get('effectiveContextSize')}")
        return pods[0]

    pod = wait_for("the rollout to the new context", 240, rolled)
    log(f"rolled out in {time.monotonic() - t0:.1f} s: pod {pod['metadata']['name']} replaced {sorted(old_pods)}")


# ---- step 7 -------------------------------------------------------------------------------------------------


def delete_and_uninstall(c: Cluster, name: str) -> None:
    c.kubectl("delete", "inferenceservice", name, "-n", NS, "--wait=true", "--timeout=60s")
    kinds = "deployments,replicasets,pods,services,persistentvolumeclaims,poddisruptionbudgets"

    def children_gone():
        left = c.items(kinds, "-n", NS, "-l", f"{SERVICE_LABEL}={name}")
        if left:
            raise Failure("left: " + ", ".join(f"{x['kind']}/{x['metadata']['name']}" for x in left))
        return True

    wait_for("garbage collection of the InferenceService's children", 120, children_gone)
    left_ns = c.items("deployments,replicasets,pods,services,persistentvolumeclaims", "-n", NS)
    check(not left_ns, f"{NS} still holds {[x['metadata']['name'] for x in left_ns]}")
    log("InferenceService deleted: Deployment, ReplicaSets, pods and Service garbage-collected")

    c.helm("uninstall", RELEASE, "--namespace", RELEASE_NS, "--wait")
    release_kinds = (
        "deployments,replicasets,pods,services,serviceaccounts,configmaps,secrets,roles,rolebindings,"
        "networkpolicies"
    )

    def release_gone():
        left = c.items(release_kinds, "--all-namespaces", "-l", f"app.kubernetes.io/instance={RELEASE}")
        left += c.items("clusterroles,clusterrolebindings", "-l", f"app.kubernetes.io/instance={RELEASE}")
        left += [p for p in c.items("pods", "-n", RELEASE_NS)]
        if left:
            raise Failure("left: " + ", ".join(f"{x['kind']}/{x['metadata']['name']}" for x in left))
        return True

    wait_for("helm uninstall to remove the release", 120, release_gone)
    # What remains in the release namespace besides what Kubernetes puts in every namespace.
    rest = c.items("all,configmaps,secrets,serviceaccounts,roles,rolebindings,leases", "-n", RELEASE_NS)
    builtin = {("ServiceAccount", "default"), ("ConfigMap", "kube-root-ca.crt")}
    rest = [
        (x["kind"], x["metadata"]["name"])
        for x in rest
        if (x["kind"], x["metadata"]["name"]) not in builtin
        and not (x["kind"] == "Secret" and x["metadata"]["name"].startswith("default-token-"))
    ]
    # The leader Lease is the operator's own runtime record (released, not deleted, when it stops), not a
    # chart object; helm never owned it. Anything else is a leak.
    leaks = [r for r in rest if r != ("Lease", "kiln-operator")]
    check(not leaks, f"left in {RELEASE_NS} after helm uninstall: {leaks}")
    crd = c.get("crd", "inferenceservices.kiln.dev")
    log(
        "helm uninstall: no object of the release left"
        + (" (the operator's released leader Lease remains in the namespace)" if rest else "")
        + ("; the CRD stays, as Helm keeps crds/ by design" if crd else "")
    )


# ---- diagnostics ------------------------------------------------------------------------------------------


def diagnostics(c: Cluster) -> None:
    def show(title: str, *args: str) -> None:
        print(f"\n----- {title}", flush=True)
        try:
            print(c.kubectl(*args, check_rc=False), flush=True)
        except Exception as e:  # noqa: BLE001 - diagnostics must not hide the failure
            print(f"({e})")

    show("operator logs", "logs", "-n", RELEASE_NS, "-l", "app.kubernetes.io/name=kiln-operator",
         "--all-containers", "--tail=200", "--prefix")  # fmt: skip
    for p in c.items("pods", "-n", NS):
        pname = p["metadata"]["name"]
        for cont in [x["name"] for x in p["spec"].get("initContainers") or []] + [
            x["name"] for x in p["spec"]["containers"]
        ]:
            show(f"logs {NS}/{pname} {cont}", "logs", "-n", NS, pname, "-c", cont, "--tail=200")
    show("InferenceServices", "get", "inferenceservices", "-A", "-o", "yaml")
    show("pods", "get", "pods", "-A", "-o", "wide")
    show("describe pods", "describe", "pods", "-n", NS)
    show("describe operator pods", "describe", "pods", "-n", RELEASE_NS)
    show("events", "get", "events", "-A", "--sort-by=.lastTimestamp")
    kubelet_log = c.run_dir / "logs/kubelet.log"
    if kubelet_log.exists():
        print("\n----- kubelet log (last 40 lines)")
        print("\n".join(kubelet_log.read_text(errors="replace").splitlines()[-40:]))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kubeconfig", required=True)
    p.add_argument("--tools", required=True, type=Path, help="directory with kubectl and helm")
    p.add_argument("--node-run", required=True, type=Path, help="scripts/k8s/node.sh's state directory")
    p.add_argument("--operator-image", required=True)
    p.add_argument("--agent-image", required=True)
    p.add_argument("--model-uri", required=True)
    p.add_argument("--model-sha256", required=True)
    p.add_argument("--mirror-log", required=True, type=Path)
    p.add_argument("--prometheus", required=True, type=Path, help="directory with prometheus (scripts/prometheus.sh)")
    p.add_argument("--work", required=True, type=Path, help="scratch directory (Prometheus' data)")
    p.add_argument("--node-cache", required=True, type=Path,
                   help="the node's model cache directory (hostPath), writable by uid 65532")
    p.add_argument("--timings", type=Path, help="write the measured times here (JSON)")
    p.add_argument("--keep", action="store_true", help="stop after step 5, leaving everything running")
    a = p.parse_args()
    c = Cluster(a.tools, a.kubeconfig, a.node_run)
    try:
        return run_steps(a, c)
    finally:
        shutil.rmtree(c.helm_home, ignore_errors=True)


def run_steps(a: argparse.Namespace, c: Cluster) -> int:
    isvc = example_manifest(a.model_uri, a.model_sha256)
    name = isvc["metadata"]["name"]
    ctx = isvc["spec"]["context"]["size"]
    try:
        log("step 2: helm install charts/kiln")
        install_chart(c, a.operator_image, a.agent_image, a.node_cache)
        op_pod = c.items("pods", "-n", RELEASE_NS, "-l", "app.kubernetes.io/name=kiln-operator")[0]
        check_restricted(c, op_pod, "operator", writable=[], read_only=[])
        log("steps 3-4: kubectl apply the tiny CPU example (model from the mirror on the node)")
        times = apply_and_wait(c, isvc)
        if a.timings:
            a.timings.write_text(json.dumps(times))
        check_fetched_from_mirror(c, name, a.model_uri.rsplit("/", 1)[1], a.mirror_log)
        log("step 5: the Service answers; metrics; status; security context")
        check_serving(c, name, ctx)
        check_prometheus_scrapes(c, name, a.prometheus, a.work / "prometheus")
        check_restricted(c, agent_pods(c, name)[0], "kiln-agent", writable=["/tmp"], read_only=["/models"],
                         host_dirs={"/models": a.node_cache})
        if a.keep:
            cip = c.get("service", name, "-n", NS)["spec"]["clusterIP"]
            log(f"kept running: the OpenAI API of {NS}/{name} is at http://{cip}/v1")
            return 0
        log("step 6: edit the context size")
        new_ctx = ctx // 2
        edit_context(c, name, new_ctx)
        check_serving(c, name, new_ctx)
        check_downloaded_once(a.model_uri.rsplit("/", 1)[1], a.mirror_log, a.node_cache)
        log("step 7: delete the InferenceService, helm uninstall")
        delete_and_uninstall(c, name)
    except (Failure, openai.APIError, subprocess.SubprocessError, KeyError, IndexError, OSError) as e:
        print(f"\n[e2e] FAILED: {type(e).__name__}: {e}", flush=True)
        diagnostics(c)
        return 1
    log("PASSED")
    return 0


if __name__ == "__main__":
    sys.exit(main())
