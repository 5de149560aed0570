//! `kiln-operator crd` prints the InferenceService CRD; `kiln-operator run` runs the controller against the
//! cluster of the current kubeconfig (or the in-cluster service account).

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use kiln_operator::agent_status::Poller;
use kiln_operator::children::deployment::DeploymentDefaults;
use kiln_operator::controller::{self, Context};
use kiln_operator::{leader, metrics, telemetry};
use kube::runtime::events::{Recorder, Reporter};
use kube::Client;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "kiln-operator",
    version,
    about = "Reconciles InferenceService objects into kiln-agent pods"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the InferenceService CustomResourceDefinition as YAML.
    Crd,
    /// Run the controller.
    Run(Box<RunArgs>),
}

#[derive(clap::Args)]
struct RunArgs {
    /// Address of /metrics and /healthz.
    #[arg(
        long,
        default_value = "0.0.0.0:8081",
        env = "KILN_OPERATOR_METRICS_ADDR"
    )]
    metrics_addr: SocketAddr,
    /// kiln-agent image for services that name none.
    #[arg(long, env = "KILN_AGENT_IMAGE", default_value = concat!("ghcr.io/kiln-dev/kiln-agent:", env!("CARGO_PKG_VERSION")))]
    agent_image: String,
    /// Pull policy for the default agent image (Always, IfNotPresent, Never).
    #[arg(long, env = "KILN_AGENT_IMAGE_PULL_POLICY", value_parser = ["Always", "IfNotPresent", "Never"])]
    agent_image_pull_policy: Option<String>,
    /// The node directory of `modelCache.type: hostPath` caches (absolute). It must be writable by the
    /// agent's uid 65532 on every node.
    #[arg(long, env = "KILN_NODE_CACHE_DIR", default_value = "/var/lib/kiln/models", value_parser = parse_node_cache_dir)]
    node_cache_dir: String,
    /// Where each agent's status is read; `{ip}` and `{port}` are the pod's IP and agent port.
    #[arg(
        long,
        env = "KILN_AGENT_STATUS_URL",
        default_value = "http://{ip}:{port}/status"
    )]
    agent_status_url: String,
    /// Seconds between status polls of a service's agents.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=300))]
    status_interval_s: u64,
    /// Seconds one agent status request may take.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=60))]
    status_timeout_s: u64,
    /// Services reconciled at the same time.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=256))]
    concurrency: u16,
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "KILN_OPERATOR_NAMESPACE")]
    namespace: Option<String>,
    /// Reconcile without holding the leader Lease (only safe with a single replica).
    #[arg(long)]
    no_leader_election: bool,
    /// Namespace of the leader Lease (the operator's own namespace in a cluster).
    #[arg(long, env = "POD_NAMESPACE", default_value = "kiln-system")]
    lease_namespace: String,
    /// Name of the leader Lease.
    #[arg(long, default_value = "kiln-operator")]
    lease_name: String,
    /// This replica's identity in the Lease (default: the pod name, else host name and process id).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Seconds a standby waits, after the Lease last changed, before it takes over.
    #[arg(long, default_value_t = 15)]
    lease_duration_s: u64,
    /// Seconds the leader keeps reconciling without a successful renewal (less than the lease duration).
    #[arg(long, default_value_t = 10)]
    renew_deadline_s: u64,
    /// Seconds between attempts to take or renew the Lease (less than the renew deadline).
    #[arg(long, default_value_t = 2)]
    retry_period_s: u64,
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Crd => kiln_crds::crd_yaml()
            .map(|yaml| print!("{yaml}"))
            .context("serializing the CRD"),
        Command::Run(args) => {
            let args = *args;
            telemetry::init();
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")
                .and_then(|rt| rt.block_on(run(args)))
        }
    };
    if let Err(e) = result {
        eprintln!("kiln-operator: {e:#}");
        std::process::exit(1);
    }
}

/// An absolute directory without `.`/`..` segments (a hostPath the kubelet mounts as given).
fn parse_node_cache_dir(s: &str) -> Result<String, String> {
    let ok = s.len() <= 256
        && s.starts_with('/')
        && s.len() > 1
        && s[1..].split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        });
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "`{s}` is not an absolute directory path of plain names (letters, digits, . _ -; no . or ..)"
        ))
    }
}

fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "kiln-operator".to_string());
    format!("{host}-{}", std::process::id())
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    // Checked before anything connects: a bad setting is a start-up error, not a later surprise.
    let timing = leader::Timing::new(
        args.lease_duration_s,
        args.renew_deadline_s,
        args.retry_period_s,
    )
    .map_err(anyhow::Error::msg)?;
    let client = Client::try_default()
        .await
        .context("connecting to Kubernetes (KUBECONFIG or in-cluster service account)")?;
    let metrics_server = tokio::spawn(metrics::serve(args.metrics_addr));

    let identity = args.identity.clone().unwrap_or_else(default_identity);
    let pdb_resource = loop {
        match controller::discover_pdb_resource(&client).await {
            Ok(r) => break r,
            Err(e) => {
                tracing::warn!(error = %e, "discovering the policy API group; retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    };
    let reporter = Reporter {
        controller: "kiln-operator".to_string(),
        instance: Some(identity.clone()),
    };
    let ctx = Arc::new(Context::new(
        client.clone(),
        Recorder::new(client.clone(), reporter),
        Poller::new(
            args.agent_status_url.clone(),
            Duration::from_secs(args.status_timeout_s),
        )?,
        DeploymentDefaults {
            agent_image: args.agent_image.clone(),
            image_pull_policy: args.agent_image_pull_policy.clone(),
            node_cache_dir: args.node_cache_dir.clone(),
        },
        pdb_resource,
        Duration::from_secs(args.status_interval_s),
    ));

    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down");
        let _ = shutdown_tx.send(true);
    });
    let shutdown = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };

    if args.no_leader_election {
        metrics::set_leader(true);
        controller::run(
            ctx,
            args.namespace.clone(),
            args.concurrency,
            shutdown(shutdown_rx.clone()),
        )
        .await;
    } else {
        let lease = leader::LeaseSettings {
            namespace: args.lease_namespace.clone(),
            name: args.lease_name.clone(),
            identity,
        };
        let mut elector = leader::Elector::new(&client, &lease, timing);
        while !*shutdown_rx.borrow() {
            tokio::select! {
                _ = elector.acquire() => {}
                _ = shutdown(shutdown_rx.clone()) => break,
            }
            metrics::set_leader(true);
            // Losing the lease drops the controller at once (its in-flight reconciles are cancelled): the
            // old leader must have stopped before the renew deadline, not after a graceful drain. A
            // shutdown drains gracefully while the lease is still renewed, then releases it.
            let lost = tokio::select! {
                _ = elector.keep() => true,
                _ = controller::run(
                    ctx.clone(),
                    args.namespace.clone(),
                    args.concurrency,
                    shutdown(shutdown_rx.clone()),
                ) => false,
            };
            metrics::set_leader(false);
            if lost {
                tracing::warn!("lost leadership; the controller is stopped");
            } else {
                elector.release().await;
            }
        }
    }
    metrics_server.abort();
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
