//! Running this server's share of each generation: fetch the source, build, start, check,
//! report to central. Central decides from the reports whether the generation serves.
//! Operator actions on single containers (logs, exec, stop, restart) arrive the same way.
//!
//! # Layout
//! - `reconcile`: the loop that follows this server's assignments and applies each.
//! - `intent`: what the agent is asked to do and what is under way, shared by every task.
//! - `plan`: the loop's decisions (adopt, replace, start, build, stop), pure functions.
//! - `settle`: a wanted generation built, started and checked; `retire`: containers
//!   drained and stopped.
//! - `report`: what runs here, sent to central; `liveness`: settled containers watched.
//! - `options`: how this server runs workloads (the agent's flags).
//! - `build`, `context`, `health`, `progress`, `actions`: images, checks, deploy output
//!   and operator actions.
//!
//! Containers are found again by their labels, so an agent restarted mid-deploy checks and
//! reports what already runs instead of starting it twice.

pub mod actions;
mod build;
mod context;
mod health;
mod intent;
mod liveness;
mod mtu;
mod options;
mod plan;
mod progress;
mod reconcile;
mod report;
mod retire;
mod settle;

pub use build::{BuildError, image_for};
pub use context::{Context, ContextError, GENERATED, build_context};
pub use health::check;
pub use options::WorkloadOptions;
pub use reconcile::run;
