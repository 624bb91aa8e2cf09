//! The Node major an app's `engines.node` range picks, read as npm reads ranges.

use std::ops::RangeInclusive;

use nodejs_semver::Range;

/// The Node majors ferry has base images for (the official `node:<major>-bookworm-slim`).
pub const NODE_MAJORS: RangeInclusive<u32> = 18..=26;

/// The major an app without `engines.node` gets: the active LTS line.
pub const DEFAULT_NODE_MAJOR: u32 = 24;

/// Why `engines.node` picks no major.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum EnginesError {
    #[error(
        "package.json's engines.node {range:?} is not a version range npm understands \
         (e.g. \"20.x\", \">=20 <21\", \"^22.4\"); fix it"
    )]
    Unreadable { range: String },
    #[error(
        "package.json's engines.node {range:?} allows no Node major ferry has a base image \
         for ({first} to {last}); widen the range, or give the service a Dockerfile on the \
         image you need",
        first = NODE_MAJORS.start(),
        last = NODE_MAJORS.end()
    )]
    Unsatisfiable { range: String },
}

/// The major `range` picks: the newest LTS (even) major it allows, else the newest odd one,
/// as a newer supported line beats a "current" one that ends within months. Majors are
/// those of [`NODE_MAJORS`].
pub fn node_major(range: &str) -> Result<u32, EnginesError> {
    let parsed = Range::parse(range).map_err(|_| EnginesError::Unreadable {
        range: range.to_string(),
    })?;
    let allows =
        |major: u32| Range::parse(format!("{major}.x")).is_ok_and(|line| parsed.allows_any(&line));
    let newest = |even: bool| {
        NODE_MAJORS
            .rev()
            .filter(|m| (m % 2 == 0) == even)
            .find(|m| allows(*m))
    };
    newest(true)
        .or_else(|| newest(false))
        .ok_or_else(|| EnginesError::Unsatisfiable {
            range: range.to_string(),
        })
}
