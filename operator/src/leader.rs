//! Leader election with a coordination.k8s.io Lease (kube-lease-manager): only the holder reconciles, so two
//! operator replicas never apply the same children at once. Losing the lease stops the controller; the
//! replica then waits to win it again instead of exiting.

use kube::Client;
use kube_lease_manager::LeaseManagerBuilder;
use std::time::Duration;
use tokio::sync::watch;

/// Lease timing: a dead leader is replaced within `LEASE_SECONDS`.
const LEASE_SECONDS: u64 = 15;
const RENEW_GRACE_SECONDS: u64 = 5;

pub struct LeaseSettings {
    pub namespace: String,
    pub name: String,
    pub identity: String,
}

/// Waits until this replica holds the lease. Returns a receiver that turns false when it is lost
/// (dropping the receiver releases the lease).
pub async fn acquire(client: &Client, settings: &LeaseSettings) -> watch::Receiver<bool> {
    loop {
        let built = LeaseManagerBuilder::new(client.clone(), &settings.name)
            .with_namespace(&settings.namespace)
            .with_identity(&settings.identity)
            .with_duration(LEASE_SECONDS)
            .with_grace(RENEW_GRACE_SECONDS)
            .build()
            .await;
        let manager = match built {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "creating the leader lease manager; retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
                continue;
            }
        };
        let (mut rx, _task) = manager.watch().await;
        tracing::info!(lease = %settings.name, identity = %settings.identity, "waiting for leadership");
        loop {
            if *rx.borrow_and_update() {
                tracing::info!(identity = %settings.identity, "became leader");
                return rx;
            }
            if rx.changed().await.is_err() {
                break; // the manager's task ended: build a new one
            }
        }
    }
}

/// Resolves when leadership is lost (or the lease manager stops).
pub async fn lost(mut rx: watch::Receiver<bool>) {
    loop {
        if !*rx.borrow_and_update() {
            return;
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}
