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
    let unreadable = || EnginesError::Unreadable {
        range: range.to_string(),
    };
    // Each `||` alternative is the intersection of its comparators. Read one comparator
    // at a time: nodejs-semver takes ">=22 <20" for ">=22 || <20", where npm finds nothing.
    let alternatives: Vec<Vec<Range>> = range
        .split("||")
        .map(|alternative| {
            comparators(alternative)
                .iter()
                .map(|c| Range::parse(c).map_err(|_| unreadable()))
                .collect()
        })
        .collect::<Result<_, _>>()?;
    let allows = |major: u32| {
        let Ok(line) = Range::parse(format!("{major}.x")) else {
            return false;
        };
        alternatives.iter().any(|all| {
            // The least version of the line that every comparator takes, if there is one.
            let both = all.iter().try_fold(line.clone(), |acc, c| acc.intersect(c));
            both.and_then(|b| b.min_version())
                .is_some_and(|v| line.satisfies(&v) && all.iter().all(|c| c.satisfies(&v)))
        })
    };
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

/// The comparators of one alternative: ">= 18 <20" is [">=18", "<20"], a hyphen range
/// "18 - 20" one comparator, an empty alternative "*".
fn comparators(alternative: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut tokens = alternative.split_whitespace().peekable();
    while let Some(token) = tokens.next() {
        if token == "-" {
            if let (Some(last), Some(next)) = (out.last_mut(), tokens.next()) {
                *last = format!("{last} - {next}");
            }
            continue;
        }
        // An operator on its own (">= 18") belongs to the version after it.
        if token.chars().all(|c| "<>=~^".contains(c))
            && let Some(next) = tokens.next()
        {
            out.push(format!("{token}{next}"));
            continue;
        }
        out.push(token.to_string());
    }
    if out.is_empty() {
        out.push("*".into());
    }
    out
}
