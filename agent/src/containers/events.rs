//! Docker's lifecycle events of ferry's containers: they start, die or stop.

use std::collections::HashMap;

use bollard::query_parameters::EventsOptionsBuilder;
use futures_util::{Stream, StreamExt as _};

use super::{ContainerError, Engine, LABEL_STACK};

/// One lifecycle event.
#[derive(Debug)]
pub struct Lifecycle {
    /// The container's Docker id (empty if the engine left it out).
    pub id: String,
    /// What happened: `start`, `die` or `stop`.
    pub action: String,
}

/// The lifecycle events of every container carrying ferry's labels, from now on, until
/// the engine closes the stream; an error ends it.
pub fn lifecycle(engine: &Engine) -> impl Stream<Item = Result<Lifecycle, ContainerError>> + use<> {
    let filters = HashMap::from([
        ("type", vec!["container"]),
        ("label", vec![LABEL_STACK]),
        ("event", vec!["die", "start", "stop"]),
    ]);
    engine
        .docker()
        .events(Some(EventsOptionsBuilder::new().filters(&filters).build()))
        .map(|event| {
            let event = event.map_err(|source| ContainerError::Engine {
                action: "following",
                what: "the engine's container events".into(),
                source,
            })?;
            Ok(Lifecycle {
                id: event.actor.and_then(|a| a.id).unwrap_or_default(),
                action: event.action.unwrap_or_default(),
            })
        })
}
