//! Shared pieces of the tests against a real kube-apiserver (scripts/k8s/control-plane.sh up): the admin
//! client, the CRD, a namespace per test, the operator binary running under the least-privilege RBAC of
//! operator/rbac.yaml, kubectl, and polling helpers. Tests skip (with the reason printed) when
//! KILN_TEST_KUBECONFIG is unset; scripts/test.sh sets it, so CI runs them.
#![allow(dead_code)]

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kiln_crds::InferenceService;
use kube::api::{Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// The admin kubeconfig of the test control plane, or None (and a printed reason) to skip.
pub fn kubeconfig_or_skip(test: &str) -> Option<PathBuf> {
    match std::env::var_os("KILN_TEST_KUBECONFIG") {
        Some(p) if Path::new(&p).is_file() => Some(PathBuf::from(p)),
        _ => {
            eprintln!(
                "SKIPPED {test}: KILN_TEST_KUBECONFIG is not set (run `scripts/k8s/control-plane.sh up` and \
                 export KILN_TEST_KUBECONFIG=<the path it prints>, or run scripts/test.sh)"
            );
            None
        }
    }
}

pub async fn client_for(kubeconfig: &Path) -> Client {
    let kc = Kubeconfig::read_from(kubeconfig).expect("reading the kubeconfig");
    let cfg = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig is usable");
    Client::try_from(cfg).expect("client")
}

/// Polls `f` every 200 ms until it returns Some, or panics with `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Installs (or updates) the InferenceService CRD and waits until it is Established.
pub async fn install_crd(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = kiln_crds::crd();
    let name = crd.metadata.name.clone().unwrap();
    crds.patch(
        &name,
        &PatchParams::apply("kiln-tests").force(),
        &Patch::Apply(&crd),
    )
    .await
    .expect("applying the CRD");
    wait_for("the CRD to be established", Duration::from_secs(30), || {
        let crds = crds.clone();
        let name = name.clone();
        async move {
            let c = crds.get(&name).await.ok()?;
            let established = c
                .status?
                .conditions?
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True");
            established.then_some(())
        }
    })
    .await;
}

/// Creates a fresh namespace for one test.
pub async fn namespace(client: &Client, prefix: &str) -> String {
    let name = format!(
        "{prefix}-{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
            ^ std::process::id()
    );
    let ns: Namespace = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": {"kiln.dev/test": "true"}}
    }))
    .unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("creating the test namespace");
    // Pods need the namespace's default ServiceAccount, made by the controller-manager.
    let sas: Api<k8s_openapi::api::core::v1::ServiceAccount> =
        Api::namespaced(client.clone(), &name);
    wait_for(
        "the default service account",
        Duration::from_secs(30),
        || {
            let sas = sas.clone();
            async move { sas.get_opt("default").await.ok().flatten() }
        },
    )
    .await;
    name
}

pub async fn delete_namespace(client: &Client, name: &str) {
    let _ = Api::<Namespace>::all(client.clone())
        .delete(name, &Default::default())
        .await;
}

/// kubectl: $KILN_KUBECTL, else `kubectl` from scripts/k8s-tools.sh's directory ($KILN_K8S_TOOLS), else PATH.
pub fn kubectl_path() -> PathBuf {
    if let Some(p) = std::env::var_os("KILN_KUBECTL") {
        return PathBuf::from(p);
    }
    if let Some(dir) = std::env::var_os("KILN_K8S_TOOLS") {
        return Path::new(&dir).join("kubectl");
    }
    PathBuf::from("kubectl")
}

/// Runs kubectl with the given kubeconfig; returns (success, stdout, stderr).
pub fn kubectl(kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    use std::io::Write;
    let mut child = Command::new(kubectl_path())
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "running {}: {e} (set KILN_KUBECTL or KILN_K8S_TOOLS=$(scripts/k8s-tools.sh))",
                kubectl_path().display()
            )
        });
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A kubeconfig for the operator's ServiceAccount (operator/rbac.yaml applied, token from TokenRequest):
/// every test runs the operator with exactly the privileges the chart grants it.
pub fn operator_kubeconfig(admin: &Path) -> PathBuf {
    static ONCE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    ONCE.get_or_init(|| make_operator_kubeconfig(admin)).clone()
}

fn make_operator_kubeconfig(admin: &Path) -> PathBuf {
    let (ok, _, err) = kubectl(admin, &["create", "namespace", "kiln-system"], None);
    assert!(ok || err.contains("AlreadyExists"), "{err}");
    let (ok, _, err) = kubectl(
        admin,
        &["apply", "-f", &format!("{REPO}/operator/rbac.yaml")],
        None,
    );
    assert!(ok, "applying operator/rbac.yaml: {err}");
    let token = service_account_token(admin);
    let admin_cfg = std::fs::read_to_string(admin).unwrap();
    let server = admin_cfg
        .lines()
        .find_map(|l| l.trim().strip_prefix("server: "))
        .expect("server in the admin kubeconfig")
        .to_string();
    let path = std::env::temp_dir().join(format!(
        "kiln-operator-sa-{}.kubeconfig",
        std::process::id()
    ));
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {server}\n    \
             insecure-skip-tls-verify: true\nusers:\n- name: kiln-operator\n  user:\n    token: {}\n\
             contexts:\n- name: c\n  context: {{cluster: c, user: kiln-operator}}\ncurrent-context: c\n",
            token
        ),
    )
    .unwrap();
    path
}

/// A token of the kiln-operator ServiceAccount: TokenRequest (`kubectl create token`), else a legacy
/// service-account token Secret filled in by the controller-manager's token controller.
fn service_account_token(admin: &Path) -> String {
    let (ok, token, err) = kubectl(
        admin,
        &[
            "create",
            "token",
            "kiln-operator",
            "-n",
            "kiln-system",
            "--duration=2h",
        ],
        None,
    );
    if ok && !token.trim().is_empty() {
        return token.trim().to_string();
    }
    eprintln!("TokenRequest failed ({err}); using a service-account token Secret");
    let secret = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: kiln-operator-token\n  namespace: kiln-system\n  \
                  annotations: {kubernetes.io/service-account.name: kiln-operator}\ntype: kubernetes.io/service-account-token\n";
    let (ok, _, err) = kubectl(admin, &["apply", "-f", "-"], Some(secret));
    assert!(ok, "{err}");
    for _ in 0..150 {
        let (ok, out, _) = kubectl(
            admin,
            &[
                "get",
                "secret",
                "kiln-operator-token",
                "-n",
                "kiln-system",
                "-o",
                "jsonpath={.data.token}",
            ],
            None,
        );
        if ok && !out.trim().is_empty() {
            use std::io::Write;
            let mut child = Command::new("base64")
                .arg("-d")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            child
                .stdin
                .take()
                .unwrap()
                .write_all(out.trim().as_bytes())
                .unwrap();
            let decoded = child.wait_with_output().unwrap();
            return String::from_utf8(decoded.stdout)
                .unwrap()
                .trim()
                .to_string();
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("no token for the kiln-operator ServiceAccount");
}

/// A free loopback port (bound and released: good enough for tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running `kiln-operator run`, killed when dropped.
pub struct Operator {
    child: Child,
    pub metrics_port: u16,
    pub log: PathBuf,
}

impl Operator {
    pub fn start(kubeconfig: &Path, namespace: &str, extra: &[&str]) -> Operator {
        let metrics_port = free_port();
        let log =
            std::env::temp_dir().join(format!("kiln-operator-{namespace}-{metrics_port}.log"));
        let log_file = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_kiln-operator"))
            .args([
                "run",
                "--namespace",
                namespace,
                "--lease-namespace",
                "kiln-system",
                "--lease-name",
                &format!("kiln-operator-{namespace}"),
                "--metrics-addr",
                &format!("127.0.0.1:{metrics_port}"),
                "--agent-image",
                "kiln-agent:test",
            ])
            // Tests poll agents every 2 s unless they say otherwise.
            .args(if extra.contains(&"--status-interval-s") {
                &[][..]
            } else {
                &["--status-interval-s", "2"][..]
            })
            .args(extra)
            .env("KUBECONFIG", kubeconfig)
            .env("KILN_LOG", "info,kiln_operator=debug")
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("starting kiln-operator");
        Operator {
            child,
            metrics_port,
            log,
        }
    }

    /// SIGKILL: no graceful shutdown, no lease release (a crash).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub async fn metrics(&self) -> Option<String> {
        let url = format!("http://127.0.0.1:{}/metrics", self.metrics_port);
        reqwest::get(&url).await.ok()?.text().await.ok()
    }

    /// The value of an unlabelled metric line `name value`.
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let text = self.metrics().await?;
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    }

    pub fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<char> = s.chars().rev().take(4000).collect();
        tail.into_iter().rev().collect()
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An InferenceService from YAML.
pub fn service(yaml: &str) -> InferenceService {
    serde_yaml_ng::from_str(yaml).expect("test InferenceService parses")
}
