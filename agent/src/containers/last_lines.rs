//! The last lines of some output (a build's, a one-off container's), kept for the error
//! that says why it failed.

use std::collections::VecDeque;

/// How many lines a failure shows.
pub const SHOWN: usize = 20;

/// The newest [`SHOWN`] lines pushed.
#[derive(Debug, Default)]
pub struct LastLines(VecDeque<String>);

impl LastLines {
    /// Keeps `line`, forgetting the oldest when full.
    pub fn push(&mut self, line: &str) {
        if self.0.len() == SHOWN {
            self.0.pop_front();
        }
        self.0.push_back(line.to_string());
    }

    /// Whether nothing was kept.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The lines, oldest first, one a line.
    pub fn joined(&self) -> String {
        Vec::from(self.0.clone()).join("\n")
    }
}
