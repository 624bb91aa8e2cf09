//! Containers through the Docker Engine API (bollard): reaching the engine, building
//! images from uploaded source, the per-server network and its MTU, and ferry's labelled
//! containers.
//!
//! Every container ferry runs carries `ferry.stack`, `ferry.service` and
//! `ferry.generation` labels; they are how an agent finds its containers again after a
//! restart, instead of starting new ones.

pub mod cgroup;
mod engine;
pub mod events;
mod image;
pub mod last_lines;
pub mod listening;
pub mod mtu;
mod network;
pub mod oneoff;
pub mod operate;
mod running;
mod stopping;

pub use engine::{Engine, EngineError};
pub use image::{BuildOptions, ImageError, build_image, ensure_image};
pub use network::{NetworkError, ensure_network};
pub use running::{
    ContainerError, ContainerSpec, FerryContainer, LABEL_GENERATION, LABEL_INDEX, LABEL_SERVICE,
    LABEL_STACK, describe_state, list, log_tail, logs, start, until_stopped,
};
pub use stopping::{DEFAULT_STOP_GRACE, stop_and_remove};
