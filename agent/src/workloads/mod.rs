//! Running this server's share of each generation: fetch the source, build, start, check,
//! report to central. Central decides from the reports whether the generation serves.
//! Operator actions on single containers (logs, exec, stop, restart) arrive the same way.
//!
//! Containers are found again by their labels, so an agent restarted mid-deploy checks and
//! reports what already runs instead of starting it twice.

pub mod actions;
mod build;
mod context;
mod health;
mod liveness;
mod progress;
mod reconcile;

pub use build::{BuildError, image_for};
pub use context::{Context, ContextError, GENERATED, build_context};
pub use health::check;
pub use reconcile::{WorkloadOptions, run};
