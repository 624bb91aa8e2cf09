//! Containers through the Docker Engine API (bollard). For now: reaching the engine.

mod engine;

pub use engine::{Engine, EngineError};
