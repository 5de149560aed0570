//! The reconciler: InferenceService → Deployment, Service, model cache claim and PodDisruptionBudget (by
//! server-side apply, owned so garbage collection removes them), then the status from the Deployment, the
//! pods and the agents' `/status`. Errors requeue with a per-object exponential backoff; a healthy object
//! is re-polled every `status_interval` so an agent's downsize reaches the CR within seconds.

use crate::agent_status::Poller;
use crate::children::{self, deployment::DeploymentDefaults, labels};
use crate::resolve::{preset_name, resolve};
use crate::{events, metrics, status};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Service};
use kiln_crds::{InferenceService, InferenceServiceStatus};
use kube::api::{ApiResource, DynamicObject, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::events::Recorder;
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{predicates, watcher, WatchStreamExt};
use kube::{Api, Client, Resource, ResourceExt};
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Field manager of every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "kiln-operator";

/// Longest wait between retries of a failing object.
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// How long a spec that cannot be served waits before it is looked at again (an edit wakes it sooner).
const INVALID_SPEC_RECHECK: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("object has no namespace")]
    NoNamespace,
}

impl Error {
    fn kind(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(_)) => "api",
            Error::Kube(_) => "client",
            Error::NoNamespace => "no_namespace",
        }
    }
}

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub poller: Poller,
    pub defaults: DeploymentDefaults,
    /// PodDisruptionBudget API (policy/v1 or v1beta1, whichever the server has).
    pub pdb_resource: ApiResource,
    /// Re-poll interval for agent status.
    pub status_interval: Duration,
    /// Consecutive failures per object, for the backoff.
    failures: Mutex<HashMap<ObjectRef<InferenceService>, u32>>,
}

impl Context {
    pub fn new(
        client: Client,
        recorder: Recorder,
        poller: Poller,
        defaults: DeploymentDefaults,
        pdb_resource: ApiResource,
        status_interval: Duration,
    ) -> Context {
        Context {
            client,
            recorder,
            poller,
            defaults,
            pdb_resource,
            status_interval,
            failures: Mutex::new(HashMap::new()),
        }
    }

    fn record_failure(&self, obj: &InferenceService) -> u32 {
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = f.entry(ObjectRef::from(obj)).or_insert(0);
        *n = n.saturating_add(1);
        *n
    }

    fn clear_failures(&self, obj: &InferenceService) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&ObjectRef::from(obj));
    }
}

/// The policy/v1 PodDisruptionBudget when the server has it (1.21+), else policy/v1beta1.
pub async fn discover_pdb_resource(client: &Client) -> anyhow::Result<ApiResource> {
    let group = kube::discovery::group(client, "policy").await?;
    let version = if group.versions().any(|v| v == "v1") {
        "v1"
    } else {
        "v1beta1"
    };
    Ok(children::pdb::api_resource(version))
}

/// Reconciles one InferenceService.
pub async fn reconcile(obj: Arc<InferenceService>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let result = reconcile_inner(&obj, &ctx).await;
    let seconds = started.elapsed().as_secs_f64();
    match &result {
        Ok(_) => {
            ctx.clear_failures(&obj);
            metrics::reconcile_done("ok", seconds);
        }
        Err(e) => {
            metrics::reconcile_done("error", seconds);
            metrics::reconcile_error(e.kind());
        }
    }
    result
}

async fn reconcile_inner(obj: &InferenceService, ctx: &Context) -> Result<Action, Error> {
    let ns = obj.namespace().ok_or(Error::NoNamespace)?;
    let name = obj.name_any();
    tracing::debug!(%ns, %name, "reconciling");

    // The spec's cross-field rules and the Deployment both fail only because of the spec: that is a status
    // (Failed, InvalidSpec) and an event, not a retry loop.
    let resolved = resolve(&obj.spec);
    let built = resolved
        .as_ref()
        .map_err(Clone::clone)
        .and_then(|r| children::deployment::build(obj, r, &ctx.defaults).map(|d| (r.clone(), d)));

    let (deployment, pods, reports, resolved) = match built {
        Ok((resolved, deployment)) => {
            let deployment = apply_children(obj, &ns, &name, deployment, ctx).await?;
            let pods = list_pods(ctx, &ns, &name).await?;
            let reports = poll_agents(ctx, &pods).await;
            (Some(deployment), pods, reports, Ok(resolved))
        }
        Err(why) => (None, Vec::new(), Vec::new(), Err(why)),
    };

    let mut new_status = status::compute(&status::Observed {
        generation: obj.metadata.generation,
        endpoint: children::service::endpoint(obj),
        preset: preset_name(&obj.spec),
        resolved: resolved.as_ref().map_err(String::as_str),
        desired_replicas: obj.spec.replicas,
        deployment: deployment.as_ref(),
        pods: &pods,
        reports: &reports,
    });
    let old_status = obj.status.as_ref();
    status::carry_transition_times(&mut new_status, old_status, &now_rfc3339());
    if old_status != Some(&new_status) {
        patch_status(ctx, &ns, &name, old_status, &new_status).await?;
        events::publish_transitions(&ctx.recorder, obj, old_status, &new_status).await;
    }

    Ok(match resolved {
        Err(_) => Action::requeue(INVALID_SPEC_RECHECK),
        Ok(_) => Action::requeue(ctx.status_interval),
    })
}

/// Applies every child (concurrently: they do not depend on each other) and returns the Deployment as the
/// server has it (with its status).
async fn apply_children(
    obj: &InferenceService,
    ns: &str,
    name: &str,
    deployment: Deployment,
    ctx: &Context,
) -> Result<Deployment, Error> {
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    let client = &ctx.client;

    let claim = async {
        if let Some(claim) = children::pvc::build(obj) {
            let claim_name = claim.name_any();
            Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns)
                .patch(&claim_name, &pp, &Patch::Apply(&claim))
                .await?;
        }
        Ok::<_, Error>(())
    };
    let deployment = async {
        Ok::<_, Error>(
            Api::<Deployment>::namespaced(client.clone(), ns)
                .patch(name, &pp, &Patch::Apply(&deployment))
                .await?,
        )
    };
    let service = async {
        Api::<Service>::namespaced(client.clone(), ns)
            .patch(name, &pp, &Patch::Apply(&children::service::build(obj)))
            .await?;
        Ok::<_, Error>(())
    };
    let budget = async {
        let pdbs = Api::<DynamicObject>::namespaced_with(client.clone(), ns, &ctx.pdb_resource);
        match children::pdb::build(obj, &ctx.pdb_resource) {
            Some(pdb) => {
                pdbs.patch(name, &pp, &Patch::Apply(&pdb)).await?;
            }
            None => {
                // Scaled down to one replica: remove the budget this service owns (and only that one).
                if let Some(existing) = pdbs.get_opt(name).await? {
                    let owned = existing
                        .owner_references()
                        .iter()
                        .any(|o| Some(&o.uid) == obj.meta().uid.as_ref());
                    if owned {
                        pdbs.delete(name, &Default::default()).await?;
                    }
                }
            }
        }
        Ok::<_, Error>(())
    };
    let (_, deployment, _, _) = futures::try_join!(claim, deployment, service, budget)?;
    Ok(deployment)
}

async fn list_pods(ctx: &Context, ns: &str, name: &str) -> Result<Vec<Pod>, Error> {
    let lp = ListParams::default().labels(&labels::selector_string(name));
    Ok(Api::<Pod>::namespaced(ctx.client.clone(), ns)
        .list(&lp)
        .await?
        .items)
}

async fn poll_agents(ctx: &Context, pods: &[Pod]) -> Vec<kiln_crds::AgentReport> {
    let port = children::deployment::AGENT_PORT;
    futures::future::join_all(pods.iter().map(|p| ctx.poller.poll(p, port)))
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// JSON merge patch of the status subresource; keys that disappeared are removed explicitly (null).
async fn patch_status(
    ctx: &Context,
    ns: &str,
    name: &str,
    old: Option<&InferenceServiceStatus>,
    new: &InferenceServiceStatus,
) -> Result<(), Error> {
    let mut value = serde_json::to_value(new).unwrap_or_default();
    if let (Some(old), Some(map)) = (
        old.and_then(|o| serde_json::to_value(o).ok()),
        value.as_object_mut(),
    ) {
        for key in old.as_object().into_iter().flat_map(|o| o.keys()) {
            map.entry(key.clone()).or_insert(serde_json::Value::Null);
        }
    }
    Api::<InferenceService>::namespaced(ctx.client.clone(), ns)
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({ "status": value })),
        )
        .await?;
    Ok(())
}

fn now_rfc3339() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .round(k8s_openapi::jiff::Unit::Second)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// Retries a failed object after 1, 2, 4, ... seconds, at most [`MAX_BACKOFF`].
pub fn error_policy(obj: Arc<InferenceService>, error: &Error, ctx: Arc<Context>) -> Action {
    let failures = ctx.record_failure(&obj);
    let delay = Duration::from_secs(1u64 << failures.min(9).saturating_sub(1)).min(MAX_BACKOFF);
    tracing::warn!(
        namespace = obj.namespace().unwrap_or_default(),
        name = %obj.name_any(),
        %error,
        failures,
        retry_in_s = delay.as_secs(),
        "reconcile failed"
    );
    let recorder = ctx.recorder.clone();
    let message = error.to_string();
    tokio::spawn(async move { events::publish_error(&recorder, &obj, &message).await });
    Action::requeue(delay)
}

/// An Api over every namespace, or over the one the operator is limited to.
fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    <K as Resource>::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Runs the controller until `stop` resolves; `namespace` limits it to one namespace.
pub async fn run(
    ctx: Arc<Context>,
    namespace: Option<String>,
    concurrency: u16,
    stop: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let ns = namespace.as_deref();
    let services = scoped::<InferenceService>(&client, ns);
    let managed = watcher::Config::default().labels(&format!(
        "app.kubernetes.io/managed-by={}",
        labels::MANAGED_BY
    ));
    let (reader, writer) = reflector::store();
    // Only spec changes (generation) wake a reconcile from the service itself: the operator's own status
    // writes would otherwise re-trigger it; the periodic requeue keeps the agent status fresh.
    let trigger = watcher(services, watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .predicate_filter(predicates::generation, Default::default());

    Controller::for_stream(trigger, reader)
        .owns(scoped::<Deployment>(&client, ns), managed.clone())
        .owns(scoped::<Service>(&client, ns), managed.clone())
        .owns(
            scoped::<PersistentVolumeClaim>(&client, ns),
            managed.clone(),
        )
        .watches(scoped::<Pod>(&client, ns), managed, |pod: Pod| {
            let ns = pod.namespace()?;
            let owner = pod.labels().get(labels::SERVICE_LABEL)?.clone();
            Some(ObjectRef::<InferenceService>::new(&owner).within(&ns))
        })
        .with_config(ControllerConfig::default().concurrency(concurrency))
        .graceful_shutdown_on(stop)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            match res {
                Ok((obj, _)) => tracing::debug!(object = %obj, "reconciled"),
                Err(e) => tracing::debug!(error = %e, "controller event"),
            }
        })
        .await;
}
