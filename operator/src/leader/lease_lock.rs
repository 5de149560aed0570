//! One attempt to take or renew the leader Lease, with optimistic concurrency: every write is an update
//! that carries the resourceVersion it read, so two replicas can never both believe their write won.
//!
//! Whether another replica's lease has expired is judged by when *this* replica last saw the record change
//! (a monotonic clock), never by the renewTime written in it: the clocks of two nodes may disagree, and a
//! replica that could not read the Lease for a while must not count that time as the holder's silence.

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::Api;
use std::time::{Duration, Instant};

/// What one attempt found.
#[derive(Debug, PartialEq, Eq)]
pub enum Attempt {
    /// This replica holds the lease now (taken or renewed by this attempt).
    Held,
    /// Another replica holds it and has renewed it within its lease duration.
    HeldBy(String),
    /// Another writer changed the Lease between our read and our write; nothing was written.
    Conflict,
}

pub struct LeaseLock {
    api: Api<Lease>,
    name: String,
    identity: String,
    lease_seconds: i32,
    /// The record as last read and when it was first seen in that form.
    observed: Option<(LeaseSpec, Instant)>,
}

impl LeaseLock {
    pub fn new(api: Api<Lease>, name: &str, identity: &str, lease_duration: Duration) -> LeaseLock {
        LeaseLock {
            api,
            name: name.to_string(),
            identity: identity.to_string(),
            lease_seconds: i32::try_from(lease_duration.as_secs()).unwrap_or(i32::MAX),
            observed: None,
        }
    }

    /// Reads the Lease and takes it (free, expired, or already ours) or reports who holds it.
    pub async fn try_acquire_or_renew(&mut self) -> Result<Attempt, kube::Error> {
        let now = Timestamp::now();
        let Some(current) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..Default::default()
                },
                spec: Some(self.record_after(None, now)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(created) => {
                    self.observe(created.spec.unwrap_or_default());
                    Ok(Attempt::Held)
                }
                Err(e) if is_conflict(&e) => Ok(Attempt::Conflict),
                Err(e) => Err(e),
            };
        };
        let record = current.spec.clone().unwrap_or_default();
        self.observe(record.clone());
        if let Some(holder) = holder(&record) {
            if holder != self.identity && !self.observed_expired() {
                return Ok(Attempt::HeldBy(holder.to_string()));
            }
        }
        // `current` keeps its metadata.resourceVersion: the update fails with 409 if anyone wrote since.
        let next = Lease {
            spec: Some(self.record_after(Some(&record), now)),
            ..current
        };
        match self
            .api
            .replace(&self.name, &PostParams::default(), &next)
            .await
        {
            Ok(updated) => {
                self.observe(updated.spec.unwrap_or_default());
                Ok(Attempt::Held)
            }
            Err(e) if is_conflict(&e) => Ok(Attempt::Conflict),
            Err(e) => Err(e),
        }
    }

    /// Gives the lease up if this replica holds it, so a standby takes over at once instead of waiting for
    /// it to expire. Returns whether a release was written.
    pub async fn release(&mut self) -> Result<bool, kube::Error> {
        let Some(current) = self.api.get_opt(&self.name).await? else {
            return Ok(false);
        };
        let record = current.spec.clone().unwrap_or_default();
        if holder(&record) != Some(self.identity.as_str()) {
            return Ok(false);
        }
        let released = LeaseSpec {
            holder_identity: None,
            lease_duration_seconds: Some(1),
            renew_time: Some(MicroTime(Timestamp::now())),
            ..record
        };
        let next = Lease {
            spec: Some(released),
            ..current
        };
        match self
            .api
            .replace(&self.name, &PostParams::default(), &next)
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if is_conflict(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The record this replica writes when it takes or renews the lease.
    fn record_after(&self, previous: Option<&LeaseSpec>, now: Timestamp) -> LeaseSpec {
        let ours = previous.and_then(holder) == Some(self.identity.as_str());
        let previous_transitions = previous.and_then(|p| p.lease_transitions).unwrap_or(0);
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.lease_seconds),
            acquire_time: if ours {
                previous.and_then(|p| p.acquire_time.clone())
            } else {
                Some(MicroTime(now))
            },
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(if ours || previous.is_none() {
                previous_transitions
            } else {
                previous_transitions.saturating_add(1)
            }),
            ..Default::default()
        }
    }

    /// Notes the record; the clock of its expiry restarts whenever it differs from the last one seen.
    fn observe(&mut self, record: LeaseSpec) {
        match &self.observed {
            Some((seen, _)) if *seen == record => {}
            _ => self.observed = Some((record, Instant::now())),
        }
    }

    /// Whether the observed record went unchanged for longer than the duration its holder promised.
    fn observed_expired(&self) -> bool {
        let Some((record, seen_at)) = &self.observed else {
            return true;
        };
        let promised = record
            .lease_duration_seconds
            .map_or(self.lease_seconds, |s| s.max(0));
        seen_at.elapsed() >= Duration::from_secs(u64::try_from(promised).unwrap_or(0))
    }
}

fn holder(record: &LeaseSpec) -> Option<&str> {
    record.holder_identity.as_deref().filter(|h| !h.is_empty())
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(status) if status.code == 409)
}
