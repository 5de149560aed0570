//! kiln-operator: reconciles `InferenceService` objects (kiln.dev/v1alpha1) into kiln-agent pods.
//! One concern per module; the reconciler is [`controller::reconcile`].

pub mod agent_status;
pub mod children;
pub mod controller;
pub mod events;
pub mod leader;
pub mod metrics;
pub mod presets;
pub mod quantity;
pub mod resolve;
pub mod status;
pub mod telemetry;
