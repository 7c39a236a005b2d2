//! `tether-operator`: reconciles Device, DeviceStream and RelayPool resources.
//!
//! * [`trust`]: the CA and the token-signing key, kept in Secrets in the operator's namespace.
//! * [`device`]: issues and renews device client certificates.
//! * [`stream`]: validates DeviceStreams, computes their relay, mints their tokens, expires them.
//! * [`relaypool`]: runs and scales the relay fleet.
//!
//! Each reconciler follows observe → validate → build → apply (server-side apply, owner
//! references) → status (conditions, observedGeneration, Events); `validate` and `build` take
//! plain data and never a client. [`controller::run`] is the driver they share (metrics,
//! per-object backoff, shutdown); everything a reconcile needs is in one [`Context`] per operator
//! (no process-wide state). [`run()`] adds leader election ([`lease`]) and the admin server.

#![forbid(unsafe_code)]

pub mod args;
pub mod backoff;
pub mod conditions;
pub mod context;
pub mod controller;
pub mod device;
pub mod duration;
pub mod fleet;
pub mod k8s;
pub mod lease;
pub mod metrics;
pub mod relaypool;
pub mod run;
pub mod stream;
pub mod telemetry;
pub mod trust;

pub use args::Args;
pub use context::Context;
pub use run::{RunError, run, run_with_client};

/// Field manager for server-side apply of objects the operator owns.
pub const FIELD_MANAGER: &str = "tether-operator";
/// Field manager for status patches.
pub const STATUS_FIELD_MANAGER: &str = "tether-operator-status";
