//! What the agent shows of its work on one generation (build output, a deploy_command's
//! output) to the operator's `ferry deploy`, through central: lines are kept here and sent
//! as one [`ProgressReport`] at most every [`EVERY`] while they change, and once more at
//! the end. Best effort: a report central does not take is logged, never retried.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use ferry_api::{client::Client, types::ProgressReport};
use tokio::sync::Notify;
use tracing::debug;

/// Shortest time between two reports.
const EVERY: Duration = Duration::from_millis(500);

#[derive(Default)]
struct Lines {
    kept: VecDeque<String>,
    total: u64,
    sent: u64,
    done: bool,
}

/// A generation's progress lines on this server; cheap to clone.
#[derive(Clone)]
pub struct Progress {
    lines: Arc<Mutex<Lines>>,
    changed: Arc<Notify>,
}

impl Progress {
    /// Starts sending the lines of `generation` of `stack` on `server` to central.
    pub fn start(client: Client, server: String, stack: String, generation: u64) -> Self {
        let progress = Self {
            lines: Arc::default(),
            changed: Arc::new(Notify::new()),
        };
        let sender = progress.clone();
        tokio::spawn(async move {
            loop {
                sender.changed.notified().await;
                let (report, done) = {
                    let mut lines = sender.lock();
                    if lines.done && lines.total == 0 {
                        return;
                    }
                    if lines.sent == lines.total && !lines.done {
                        continue;
                    }
                    lines.sent = lines.total;
                    let report = ProgressReport {
                        lines: lines.kept.iter().cloned().collect(),
                        total: lines.total,
                    };
                    (report, lines.done)
                };
                if let Err(e) = client
                    .report_progress(&server, &stack, generation, &report)
                    .await
                {
                    debug!(%stack, generation, "progress report: {e}");
                }
                if done {
                    return;
                }
                tokio::time::sleep(EVERY).await;
            }
        });
        progress
    }

    /// Adds one line (cut to [`ProgressReport::MAX_LINE`] bytes).
    pub fn line(&self, text: &str) {
        {
            let mut lines = self.lock();
            let mut text = text.to_string();
            if text.len() > ProgressReport::MAX_LINE {
                let mut cut = ProgressReport::MAX_LINE;
                while !text.is_char_boundary(cut) {
                    cut -= 1;
                }
                text.truncate(cut);
            }
            if lines.kept.len() == ProgressReport::MAX_LINES {
                lines.kept.pop_front();
            }
            lines.kept.push_back(text);
            lines.total += 1;
        }
        self.changed.notify_one();
    }

    /// Sends what is left and stops.
    pub fn finish(&self) {
        self.lock().done = true;
        self.changed.notify_one();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lines> {
        self.lines.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
