//! Leader election on a coordination.k8s.io Lease, with the guarantees of client-go's leaderelection: only
//! the holder reconciles, so two operator replicas never act at once.
//!
//! - A standby takes the lease only after it has seen the record unchanged for a whole lease duration.
//! - The leader renews every retry period, and steps down when no renewal has succeeded within the renew
//!   deadline, which is shorter than the lease duration: when the API server cannot be reached, the old
//!   leader has stopped before any standby may take over (the margin is lease duration − renew deadline).
//! - Every write carries the resourceVersion it read (see [`lease_lock`]), so two replicas racing for a free
//!   or expired lease cannot both win.
//!
//! (kube-lease-manager, used before, kept reporting leadership while its renewals failed, and renewed and
//! released without a resourceVersion: after an API server restart the standby took the expired lease while
//! the old leader still reconciled.)

mod lease_lock;

use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};
use lease_lock::{Attempt, LeaseLock};
use std::time::Duration;
use tokio::time::{sleep_until, timeout, timeout_at, Instant};

pub struct LeaseSettings {
    pub namespace: String,
    pub name: String,
    pub identity: String,
}

/// Lease timing, with client-go's names and defaults (15 s, 10 s, 2 s).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// How long a standby waits, after the record last changed, before it may take the lease.
    pub lease_duration: Duration,
    /// How long the leader keeps acting without a successful renewal.
    pub renew_deadline: Duration,
    /// Time between attempts to take or renew the lease.
    pub retry_period: Duration,
}

impl Default for Timing {
    fn default() -> Timing {
        Timing {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

impl Timing {
    /// Checks the ordering that makes leadership exclusive: retry period < renew deadline < lease duration.
    pub fn new(lease_s: u64, renew_deadline_s: u64, retry_period_s: u64) -> Result<Timing, String> {
        if !(0 < retry_period_s && retry_period_s < renew_deadline_s && renew_deadline_s < lease_s)
        {
            return Err(format!(
                "leader election timing needs 0 < retry period ({retry_period_s} s) < renew deadline \
                 ({renew_deadline_s} s) < lease duration ({lease_s} s): a leader must give up before its \
                 lease can expire for the others"
            ));
        }
        if i32::try_from(lease_s).is_err() {
            return Err(format!("lease duration {lease_s} s is too long"));
        }
        Ok(Timing {
            lease_duration: Duration::from_secs(lease_s),
            renew_deadline: Duration::from_secs(renew_deadline_s),
            retry_period: Duration::from_secs(retry_period_s),
        })
    }
}

/// This replica's side of the election.
pub struct Elector {
    lock: LeaseLock,
    timing: Timing,
    identity: String,
    /// When the request of the last successful take or renewal was sent.
    renewed_at: Instant,
}

impl Elector {
    pub fn new(client: &Client, settings: &LeaseSettings, timing: Timing) -> Elector {
        let api = Api::<Lease>::namespaced(client.clone(), &settings.namespace);
        Elector {
            lock: LeaseLock::new(
                api,
                &settings.name,
                &settings.identity,
                timing.lease_duration,
            ),
            timing,
            identity: settings.identity.clone(),
            renewed_at: Instant::now(),
        }
    }

    /// Waits until this replica holds the lease; API errors are logged and retried every retry period.
    pub async fn acquire(&mut self) {
        tracing::info!(identity = %self.identity, "waiting for leadership");
        let mut last_holder = None;
        loop {
            let sent = Instant::now();
            match timeout(self.timing.retry_period, self.lock.try_acquire_or_renew()).await {
                Ok(Ok(Attempt::Held)) => {
                    self.renewed_at = sent;
                    tracing::info!(identity = %self.identity, "became leader");
                    return;
                }
                Ok(Ok(Attempt::HeldBy(holder))) => {
                    if last_holder.as_ref() != Some(&holder) {
                        tracing::info!(%holder, "the leader lease is held by another replica");
                        last_holder = Some(holder);
                    }
                }
                Ok(Ok(Attempt::Conflict)) => {
                    tracing::debug!("another replica wrote the leader lease first")
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "reading the leader lease; retrying"),
                Err(_) => tracing::warn!("reading the leader lease timed out; retrying"),
            }
            sleep_until(sent + self.timing.retry_period).await;
        }
    }

    /// Keeps the lease; returns as soon as leadership is lost: another replica holds it, or no renewal
    /// succeeded within the renew deadline. The caller must stop acting at once.
    pub async fn keep(&mut self) {
        loop {
            let deadline = self.renewed_at + self.timing.renew_deadline;
            sleep_until((Instant::now() + self.timing.retry_period).min(deadline)).await;
            let sent = Instant::now();
            match timeout_at(deadline, self.lock.try_acquire_or_renew()).await {
                Ok(Ok(Attempt::Held)) => self.renewed_at = sent,
                Ok(Ok(Attempt::HeldBy(holder))) => {
                    tracing::warn!(%holder, "another replica holds the leader lease; stepping down");
                    return;
                }
                Ok(Ok(Attempt::Conflict)) => {
                    tracing::warn!("the leader lease changed under its renewal; retrying")
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "renewing the leader lease failed"),
                Err(_) => {}
            }
            if Instant::now() >= deadline {
                tracing::warn!(
                    renew_deadline_s = self.timing.renew_deadline.as_secs(),
                    "no renewal of the leader lease succeeded within the renew deadline; stepping down \
                     before it can expire for the other replicas"
                );
                return;
            }
        }
    }

    /// Gives the lease up (on shutdown) so a standby takes over at once; best effort, bounded in time.
    pub async fn release(&mut self) {
        match timeout(self.timing.retry_period, self.lock.release()).await {
            Ok(Ok(true)) => tracing::info!("released the leader lease"),
            Ok(Ok(false)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "releasing the leader lease"),
            Err(_) => tracing::warn!("releasing the leader lease timed out"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timing_must_let_the_leader_stop_before_its_lease_expires() {
        assert_eq!(Timing::new(15, 10, 2).unwrap(), Timing::default());
        for (lease, renew, retry) in [(10, 10, 2), (10, 12, 2), (15, 10, 10), (15, 10, 0)] {
            let e = Timing::new(lease, renew, retry).unwrap_err();
            assert!(e.contains("renew deadline"), "{e}");
        }
        assert!(Timing::new(u64::MAX, 10, 2).is_err());
    }
}
