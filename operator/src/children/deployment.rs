//! The Deployment of `kiln-agent serve` pods: args from the resolved spec, an init container that fetches
//! the model into the cache volume, GPU resources and affinity, probes and a restricted security context.

use super::{affinity, labels, model_cache_claim_name, owner_reference};
use crate::resolve::Resolved;
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, HTTPGetAction,
    HostPathVolumeSource, PersistentVolumeClaimVolumeSource, PodSecurityContext, PodSpec,
    PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile, SecurityContext, Volume,
    VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kiln_crds::{GpuVendor, InferenceService, ModelCacheType, SpeculativeType};
use kube::ResourceExt;

/// The agent's HTTP port inside the pod (API, probes, metrics and `/status`).
pub const AGENT_PORT: i32 = 8080;
/// Where the model cache volume is mounted.
const MODELS_DIR: &str = "/models";
/// The pod's own scratch volume (an emptyDir in every container). The link to a downloaded model lives
/// here, not in the cache: a node cache is shared by every pod on the node, and two services may name
/// different files alike.
const TMP_DIR: &str = "/tmp";
/// Where `pvc://claim/...` sources are mounted (read-only), one directory per claim.
const SOURCE_CLAIMS_DIR: &str = "/model-sources";
/// Non-root user the agent runs as (the distroless `nonroot` id).
const AGENT_UID: i64 = 65532;

/// Operator-wide settings that feed every Deployment.
#[derive(Clone, Debug)]
pub struct DeploymentDefaults {
    /// kiln-agent image when the spec names none.
    pub agent_image: String,
    /// Pull policy when the spec names none (None: the cluster's default for the tag).
    pub image_pull_policy: Option<String>,
    /// The node directory of `hostPath` model caches.
    pub node_cache_dir: String,
}

/// Where the model file comes from and where the server reads it.
#[derive(Clone, Debug, PartialEq)]
pub enum ModelSource {
    /// hf:// or https://: downloaded by the init container into the cache volume.
    Download { uri: String, file_name: String },
    /// file:///path: already inside the pod's filesystem.
    Local { path: String },
    /// pvc://claim/path: read from a mounted claim.
    Claim { claim: String, path: String },
}

impl ModelSource {
    /// Classifies a URI the schema already accepted; Err for anything else (never panics on odd input).
    pub fn parse(uri: &str) -> Result<ModelSource, String> {
        if let Some(path) = uri.strip_prefix("file://") {
            return Ok(ModelSource::Local {
                path: path.to_string(),
            });
        }
        if let Some(rest) = uri.strip_prefix("pvc://") {
            let (claim, path) = rest
                .split_once('/')
                .ok_or_else(|| format!("model.uri {uri}: expected pvc://claim/path/file.gguf"))?;
            return Ok(ModelSource::Claim {
                claim: claim.to_string(),
                path: path.to_string(),
            });
        }
        if uri.starts_with("hf://") || uri.starts_with("https://") {
            return Ok(ModelSource::Download {
                uri: uri.to_string(),
                file_name: download_file_name(uri),
            });
        }
        Err(format!(
            "model.uri {uri}: unsupported scheme (use hf://, https://, file:// or pvc://)"
        ))
    }

    /// The path `kiln-agent serve --model` gets.
    pub fn serve_path(&self) -> String {
        match self {
            ModelSource::Download { file_name, .. } => format!("{TMP_DIR}/{file_name}"),
            ModelSource::Local { path } => path.clone(),
            ModelSource::Claim { claim, path } => format!("{SOURCE_CLAIMS_DIR}/{claim}/{path}"),
        }
    }
}

/// The cache file name for a download: the URI's last path segment when it is a plain file name.
fn download_file_name(uri: &str) -> String {
    let without_query = uri.split(['?', '#']).next().unwrap_or(uri);
    let last = without_query.rsplit('/').next().unwrap_or("");
    let plain = !last.is_empty()
        && last.len() <= 200
        && !last.starts_with('.')
        && last
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if plain {
        last.to_string()
    } else {
        "model.gguf".to_string()
    }
}

/// `kiln-agent serve` arguments for a resolved spec.
pub fn serve_args(resolved: &Resolved, model_path: &str) -> Vec<String> {
    let mut args = vec![
        "serve".to_string(),
        "--model".to_string(),
        model_path.to_string(),
        "--ctx".to_string(),
        resolved.context_size.to_string(),
        "--kv-type".to_string(),
        resolved.kv_cache_type.as_str().to_string(),
    ];
    // Speculation flags only when speculating: plain decoding is the agent's default, and agents older than
    // `serve --spec` refuse the whole command line over a flag they do not know.
    if resolved.speculative != SpeculativeType::None {
        args.extend([
            "--spec".to_string(),
            resolved.speculative.as_str().to_string(),
            "--spec-draft-n-max".to_string(),
            resolved.draft_max.to_string(),
        ]);
    }
    args.extend([
        "--reasoning".to_string(),
        resolved.reasoning.as_str().to_string(),
        "--parallel".to_string(),
        resolved.parallel.to_string(),
        "--host".to_string(),
        "0.0.0.0".to_string(),
        "--port".to_string(),
        AGENT_PORT.to_string(),
    ]);
    // The downsizing floor and switch (kiln-agent's memory watcher); flags only when they differ from
    // the agent's defaults, so older agents keep working with specs that do not use them.
    if let Some(min) = resolved.context_min {
        args.extend(["--ctx-min".to_string(), min.to_string()]);
    }
    if !resolved.auto_downsize {
        args.extend(["--auto-downsize".to_string(), "false".to_string()]);
    }
    if let Some(bytes) = resolved.vram_headroom_bytes {
        args.extend(["--vram-headroom".to_string(), bytes.to_string()]);
    }
    // Always named, CPU included: an image's KILN_DEVICE must not move a CPU pod onto a device.
    let device = match resolved.vendor {
        GpuVendor::Amd => "rocm",
        GpuVendor::Nvidia => "cuda",
        GpuVendor::Cpu => "cpu",
    };
    args.extend(["--device".to_string(), device.to_string()]);
    args
}

/// `kiln-agent fetch` arguments for a download. The cache path of the file is only known once fetched (it
/// holds the hub's commit or a hash of the URL): `--link` puts it at `link`, the path serve is given.
/// `cache_max_bytes` is the cache's size limit (least recently used files no pod has open are evicted).
pub fn fetch_args(
    uri: &str,
    sha256: Option<&str>,
    link: &str,
    cache_max_bytes: Option<u64>,
) -> Vec<String> {
    let mut args = vec![
        "fetch".to_string(),
        uri.to_string(),
        "--to".to_string(),
        MODELS_DIR.to_string(),
        "--link".to_string(),
        link.to_string(),
    ];
    if let Some(sum) = sha256 {
        args.extend(["--sha256".to_string(), sum.to_string()]);
    }
    if let Some(max) = cache_max_bytes {
        args.extend(["--cache-max-bytes".to_string(), max.to_string()]);
    }
    args.extend(["--status-addr".to_string(), format!("0.0.0.0:{AGENT_PORT}")]);
    args
}

fn http_probe(path: &str, period_s: i32, failure_threshold: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_string()),
            port: IntOrString::String("http".to_string()),
            ..Default::default()
        }),
        period_seconds: Some(period_s),
        timeout_seconds: Some(3),
        failure_threshold: Some(failure_threshold),
        ..Default::default()
    }
}

fn restricted_container_security() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_string()]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.to_string(),
        mount_path: path.to_string(),
        read_only: read_only.then_some(true),
        ..Default::default()
    }
}

/// The agent container's resources: the spec's, with the GPU limit set from `gpu`.
fn resources(svc: &InferenceService, resolved: &Resolved) -> Option<ResourceRequirements> {
    let mut res = svc.spec.resources.clone().unwrap_or_default();
    if let Some(gpu) = resolved.vendor.resource_name() {
        // Extended resources must have requests == limits; setting the limit alone implies the request.
        let count = Quantity(resolved.gpu_count.to_string());
        res.limits
            .get_or_insert_with(Default::default)
            .insert(gpu.to_string(), count.clone());
        if let Some(requests) = res.requests.as_mut() {
            requests.insert(gpu.to_string(), count);
        }
    }
    (res != ResourceRequirements::default()).then_some(res)
}

/// The Deployment for a service.
pub fn build(
    svc: &InferenceService,
    resolved: &Resolved,
    defaults: &DeploymentDefaults,
) -> Result<Deployment, String> {
    let name = svc.name_any();
    let source = ModelSource::parse(&svc.spec.model.uri)?;
    let image = svc
        .spec
        .image
        .clone()
        .unwrap_or_else(|| defaults.agent_image.clone());
    let pull_policy = svc
        .spec
        .image_pull_policy
        .map(|p| p.as_str().to_string())
        .or_else(|| defaults.image_pull_policy.clone());

    let mut volumes = vec![Volume {
        name: "tmp".to_string(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Default::default()
    }];
    let mut mounts = vec![mount("tmp", "/tmp", false)];
    let mut init_containers = Vec::new();

    if let ModelSource::Download { uri, .. } = &source {
        let cache_max_bytes = svc
            .spec
            .model_cache
            .size
            .as_ref()
            .map(|q| crate::quantity::to_bytes(&q.0).map_err(|e| format!("modelCache.size: {e}")))
            .transpose()?;
        volumes.push(model_cache_volume(svc, defaults));
        mounts.push(mount("models", MODELS_DIR, true));
        init_containers.push(Container {
            name: "fetch".to_string(),
            image: Some(image.clone()),
            image_pull_policy: pull_policy.clone(),
            args: Some(fetch_args(
                uri,
                svc.spec.model.sha256.as_deref(),
                &source.serve_path(),
                cache_max_bytes,
            )),
            env: Some(common_env()),
            volume_mounts: Some(vec![
                mount("tmp", "/tmp", false),
                mount("models", MODELS_DIR, false),
            ]),
            security_context: Some(restricted_container_security()),
            // A failed fetch's last log lines (the reason: checksum, 404, cache not writable, ...)
            // become its termination message, which the status shows.
            termination_message_policy: Some("FallbackToLogsOnError".to_string()),
            ..Default::default()
        });
    }
    if let ModelSource::Claim { claim, .. } = &source {
        volumes.push(Volume {
            name: "model-source".to_string(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim.clone(),
                read_only: Some(true),
            }),
            ..Default::default()
        });
        mounts.push(mount(
            "model-source",
            &format!("{SOURCE_CLAIMS_DIR}/{claim}"),
            true,
        ));
    }

    let agent = Container {
        name: "kiln-agent".to_string(),
        image: Some(image),
        image_pull_policy: pull_policy,
        args: Some(serve_args(resolved, &source.serve_path())),
        env: Some(common_env()),
        ports: Some(vec![ContainerPort {
            name: Some("http".to_string()),
            container_port: AGENT_PORT,
            protocol: Some("TCP".to_string()),
            ..Default::default()
        }]),
        resources: resources(svc, resolved),
        // Loading 16 GB of weights can take minutes: allow up to an hour before liveness takes over.
        startup_probe: Some(http_probe("/healthz", 10, 360)),
        readiness_probe: Some(http_probe("/readyz", 5, 3)),
        liveness_probe: Some(http_probe("/healthz", 10, 3)),
        volume_mounts: Some(mounts),
        security_context: Some(restricted_container_security()),
        termination_message_policy: Some("FallbackToLogsOnError".to_string()),
        ..Default::default()
    };

    let mut tolerations = svc.spec.tolerations.clone().unwrap_or_default();
    tolerations.extend(affinity::gpu_toleration(resolved.vendor));

    let gpu = resolved.vendor != GpuVendor::Cpu;
    let pod = PodSpec {
        init_containers: (!init_containers.is_empty()).then_some(init_containers),
        containers: vec![agent],
        volumes: Some(volumes),
        affinity: affinity::node_affinity(resolved),
        node_selector: svc.spec.node_selector.clone(),
        tolerations: (!tolerations.is_empty()).then_some(tolerations),
        // The API server's SIGTERM grace is 30 s in kiln-agent serve; leave it room to drain.
        termination_grace_period_seconds: Some(45),
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(AGENT_UID),
            run_as_group: Some(AGENT_UID),
            fs_group: Some(AGENT_UID),
            // /dev/kfd and /dev/dri/render* belong to the video group on AMD hosts.
            supplemental_groups: gpu.then(|| vec![44]),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".to_string(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };

    // A GPU is scarce: surging a new pod needs a second free GPU, so replace pods one at a time instead.
    let strategy = gpu.then(|| DeploymentStrategy {
        type_: Some("RollingUpdate".to_string()),
        rolling_update: Some(RollingUpdateDeployment {
            max_surge: Some(IntOrString::Int(0)),
            max_unavailable: Some(IntOrString::Int(1)),
        }),
    });

    Ok(Deployment {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: svc.namespace(),
            labels: Some(labels::labels(&name)),
            owner_references: owner_reference(svc).map(|o| vec![o]),
            ..Default::default()
        },
        spec: Some(DeploymentSpec {
            replicas: Some(svc.spec.replicas),
            selector: LabelSelector {
                match_labels: Some(labels::selector(&name)),
                ..Default::default()
            },
            strategy,
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels::labels(&name)),
                    ..Default::default()
                }),
                spec: Some(pod),
            },
            ..Default::default()
        }),
        ..Default::default()
    })
}

fn common_env() -> Vec<EnvVar> {
    vec![
        EnvVar {
            name: "HOME".to_string(),
            value: Some("/tmp".to_string()),
            ..Default::default()
        },
        EnvVar {
            name: "KILN_LOG".to_string(),
            value: Some("info".to_string()),
            ..Default::default()
        },
    ]
}

fn model_cache_volume(svc: &InferenceService, defaults: &DeploymentDefaults) -> Volume {
    let cache = &svc.spec.model_cache;
    match cache.kind {
        // DirectoryOrCreate: a missing directory is created (root's, so the fetch then fails saying it
        // cannot write there — a clear message in the status — instead of a pod stuck mounting).
        ModelCacheType::HostPath => Volume {
            name: "models".to_string(),
            host_path: Some(HostPathVolumeSource {
                path: defaults.node_cache_dir.clone(),
                type_: Some("DirectoryOrCreate".to_string()),
            }),
            ..Default::default()
        },
        ModelCacheType::EmptyDir => Volume {
            name: "models".to_string(),
            empty_dir: Some(EmptyDirVolumeSource {
                size_limit: cache.size.clone(),
                ..Default::default()
            }),
            ..Default::default()
        },
        ModelCacheType::PersistentVolumeClaim => Volume {
            name: "models".to_string(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: model_cache_claim_name(&svc.name_any()),
                read_only: None,
            }),
            ..Default::default()
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_sources_by_scheme() {
        assert_eq!(
            ModelSource::parse("hf://org/repo/sub/Model-Q4_K_M.gguf")
                .unwrap()
                .serve_path(),
            "/tmp/Model-Q4_K_M.gguf"
        );
        assert_eq!(
            ModelSource::parse("https://h.example/x?sig=abc")
                .unwrap()
                .serve_path(),
            "/tmp/x"
        );
        assert_eq!(
            ModelSource::parse("https://h.example/dir/")
                .unwrap()
                .serve_path(),
            "/tmp/model.gguf"
        );
        assert_eq!(
            ModelSource::parse("pvc://weights/q/m.gguf")
                .unwrap()
                .serve_path(),
            "/model-sources/weights/q/m.gguf"
        );
        assert_eq!(
            ModelSource::parse("file:///opt/m.gguf")
                .unwrap()
                .serve_path(),
            "/opt/m.gguf"
        );
        assert!(ModelSource::parse("ftp://x/m.gguf").is_err());
        assert!(ModelSource::parse("pvc://claim-only").is_err());
    }

    #[test]
    fn downsizing_flags_appear_only_when_set() {
        let spec: kiln_crds::InferenceServiceSpec = serde_json::from_value(serde_json::json!({
            "model": {"uri": "file:///m.gguf"},
            "context": {"size": 8192, "min": 2048, "autoDownsize": false}
        }))
        .unwrap();
        let r = crate::resolve::resolve(&spec).unwrap();
        let args = serve_args(&r, "/m.gguf").join(" ");
        assert!(
            args.contains("--ctx-min 2048 --auto-downsize false"),
            "{args}"
        );
        let plain: kiln_crds::InferenceServiceSpec =
            serde_json::from_value(serde_json::json!({"model": {"uri": "file:///m.gguf"}}))
                .unwrap();
        let args = serve_args(&crate::resolve::resolve(&plain).unwrap(), "/m.gguf").join(" ");
        assert!(
            !args.contains("--ctx-min") && !args.contains("--auto-downsize"),
            "{args}"
        );
        assert!(!args.contains("--spec"), "no speculation, no flag: {args}");
    }

    #[test]
    fn speculation_flags_only_when_speculating() {
        let plain: kiln_crds::InferenceServiceSpec =
            serde_json::from_value(serde_json::json!({"model": {"uri": "file:///m.gguf"}}))
                .unwrap();
        let args = serve_args(&crate::resolve::resolve(&plain).unwrap(), "/m.gguf").join(" ");
        assert!(!args.contains("--spec"), "{args}");
        let mtp: kiln_crds::InferenceServiceSpec = serde_json::from_value(serde_json::json!({
            "model": {"uri": "file:///m.gguf"}, "speculative": {"type": "mtp", "draftMax": 2}
        }))
        .unwrap();
        let args = serve_args(&crate::resolve::resolve(&mtp).unwrap(), "/m.gguf").join(" ");
        assert!(args.contains(" --spec mtp --spec-draft-n-max 2 "), "{args}");
    }

    #[test]
    fn every_vendor_names_its_device_once() {
        for (gpu, device) in [
            (serde_json::json!({"vendor": "amd"}), "rocm"),
            (serde_json::json!({"vendor": "nvidia"}), "cuda"),
            (serde_json::json!({"vendor": "cpu"}), "cpu"),
            (serde_json::json!({}), "cpu"),
        ] {
            let spec: kiln_crds::InferenceServiceSpec = serde_json::from_value(
                serde_json::json!({"model": {"uri": "file:///m.gguf"}, "gpu": gpu}),
            )
            .unwrap();
            let args = serve_args(&crate::resolve::resolve(&spec).unwrap(), "/m.gguf");
            let at: Vec<usize> = (0..args.len()).filter(|&i| args[i] == "--device").collect();
            assert_eq!(at.len(), 1, "{args:?}");
            assert_eq!(
                args.get(at[0] + 1).map(String::as_str),
                Some(device),
                "{gpu}"
            );
        }
    }

    #[test]
    fn vram_headroom_is_passed_in_bytes_only_when_set() {
        let spec: kiln_crds::InferenceServiceSpec = serde_json::from_value(serde_json::json!({
            "model": {"uri": "file:///m.gguf"}, "gpu": {"vendor": "amd", "vramHeadroom": "1536Mi"}
        }))
        .unwrap();
        let args = serve_args(&crate::resolve::resolve(&spec).unwrap(), "/m.gguf").join(" ");
        assert!(args.contains(" --vram-headroom 1610612736 "), "{args}");
        let plain: kiln_crds::InferenceServiceSpec =
            serde_json::from_value(serde_json::json!({"model": {"uri": "file:///m.gguf"}}))
                .unwrap();
        let args = serve_args(&crate::resolve::resolve(&plain).unwrap(), "/m.gguf").join(" ");
        assert!(!args.contains("--vram-headroom"), "{args}");
    }

    #[test]
    fn fetch_args_carry_the_checksum_and_status_address() {
        assert_eq!(
            fetch_args("hf://o/r/m.gguf", Some("ab"), "/tmp/m.gguf", None).join(" "),
            "fetch hf://o/r/m.gguf --to /models --link /tmp/m.gguf --sha256 ab --status-addr 0.0.0.0:8080"
        );
    }

    fn deployment_for(cache: serde_json::Value) -> Result<Deployment, String> {
        let spec: kiln_crds::InferenceServiceSpec = serde_json::from_value(serde_json::json!({
            "model": {"uri": "https://mirror.example/m/Model-Q4_K_M.gguf"},
            "modelCache": cache
        }))
        .unwrap();
        let svc = InferenceService::new("qwen", spec);
        let resolved = crate::resolve::resolve(&svc.spec).unwrap();
        let defaults = DeploymentDefaults {
            agent_image: "kiln-agent:test".to_string(),
            image_pull_policy: None,
            node_cache_dir: "/var/lib/kiln/models".to_string(),
        };
        build(&svc, &resolved, &defaults)
    }

    fn models_volume(pod: &PodSpec) -> Volume {
        let volumes = pod.volumes.as_deref().unwrap_or_default();
        volumes.iter().find(|v| v.name == "models").unwrap().clone()
    }

    #[test]
    fn a_host_path_cache_is_the_operators_node_directory_with_the_size_as_eviction_limit() {
        let d = deployment_for(serde_json::json!({"type": "hostPath", "size": "40Gi"})).unwrap();
        let pod = d.spec.unwrap().template.spec.unwrap();
        let models = models_volume(&pod);
        let host = models.host_path.unwrap();
        assert_eq!(host.path, "/var/lib/kiln/models");
        assert_eq!(host.type_.as_deref(), Some("DirectoryOrCreate"));
        let fetch = pod.init_containers.unwrap().remove(0);
        let args = fetch.args.unwrap().join(" ");
        assert!(
            args.contains(&format!("--cache-max-bytes {}", 40u64 << 30)),
            "{args}"
        );
        // The link serve opens is the pod's own, never a shared name in the node cache.
        assert!(args.contains("--link /tmp/Model-Q4_K_M.gguf"), "{args}");
        let serve = pod.containers[0].args.clone().unwrap().join(" ");
        assert!(serve.contains("--model /tmp/Model-Q4_K_M.gguf"), "{serve}");
    }

    #[test]
    fn a_cache_size_that_is_no_byte_count_is_refused() {
        let e =
            deployment_for(serde_json::json!({"type": "hostPath", "size": "lots"})).unwrap_err();
        assert!(e.starts_with("modelCache.size:"), "{e}");
        let plain = deployment_for(serde_json::json!({})).unwrap();
        let pod = plain.spec.unwrap().template.spec.unwrap();
        let models = models_volume(&pod);
        assert!(models.empty_dir.is_some());
        let args = pod
            .init_containers
            .unwrap()
            .remove(0)
            .args
            .unwrap()
            .join(" ");
        assert!(!args.contains("--cache-max-bytes"), "{args}");
    }
}
