//! The report sender: what runs on this server, each container with its state and the
//! generations it serves, sent to central after every change (central's records follow
//! from the reports). The same listing keeps the data plane's callers table in step.

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use ferry_api::{client::Client, types::ContainerReport};
use tracing::warn;

use super::intent::{Shared, lock};
use crate::{
    containers::{self, Engine},
    discovery::{Callers, LocalCaller},
};

/// Everything a report needs: Docker to list, central to tell, the cgroups to look up.
/// Clones share the ordering lock.
#[derive(Clone)]
pub(super) struct Reporter {
    pub(super) engine: Engine,
    pub(super) client: Client,
    /// This server's name.
    pub(super) server: String,
    /// The data plane's cgroup root: containers' leaves are swept there.
    pub(super) cgroup_root: PathBuf,
    /// Where cgroup v2 is mounted.
    pub(super) cgroup2: PathBuf,
    pub(super) callers: Callers,
    /// Held across a listing and its report, so reports reach central in listing order
    /// and a stale one never lands last.
    in_order: Arc<tokio::sync::Mutex<()>>,
    /// Whether the last report failed to reach central: the liveness watch sends another
    /// on its next tick, so central never keeps a stale list for want of a change.
    behind: Arc<AtomicBool>,
}

impl Reporter {
    /// A reporter for this server.
    pub(super) fn new(
        engine: Engine,
        client: Client,
        server: String,
        (cgroup_root, cgroup2): (PathBuf, PathBuf),
        callers: Callers,
    ) -> Self {
        Self {
            engine,
            client,
            server,
            cgroup_root,
            cgroup2,
            callers,
            in_order: Arc::default(),
            behind: Arc::default(),
        }
    }

    /// Whether the last report did not reach central.
    pub(super) fn behind(&self) -> bool {
        self.behind.load(Ordering::Relaxed)
    }

    /// Tells central what runs here; a failure is logged and marks the reporter
    /// [`behind`](Self::behind), so it is sent again.
    pub(super) async fn report(&self, intent: &Shared) {
        let _in_order = self.in_order.lock().await;
        let Some(report) = self.local_containers(intent).await else {
            self.behind.store(true, Ordering::Relaxed);
            return;
        };
        match self.client.report_containers(&self.server, &report).await {
            Ok(_) => self.behind.store(false, Ordering::Relaxed),
            Err(e) => {
                warn!("reporting containers to central: {e}; sending it again shortly");
                self.behind.store(true, Ordering::Relaxed);
            }
        }
    }

    /// What runs here, with each container's cgroup; the callers table is made to match.
    /// None when Docker cannot list (logged).
    pub(super) async fn local_containers(&self, intent: &Shared) -> Option<Vec<ContainerReport>> {
        let running = match containers::list(&self.engine).await {
            Ok(running) => running,
            Err(e) => {
                warn!("listing containers to report: {e}");
                return None;
            }
        };
        let ids: Vec<String> = running.iter().map(|c| c.id.clone()).collect();
        containers::cgroup::sweep(&self.cgroup_root, &ids);
        let mut report = Vec::with_capacity(running.len());
        for c in running {
            let cgroup_id = match c.running {
                true => containers::cgroup::current_id(&self.engine, &c.id, &self.cgroup2).await,
                false => None,
            };
            let (serves, state) = {
                let intent = lock(intent);
                let serves = intent.serves(&c.stack, &c.service, c.generation, c.index);
                (serves, intent.state_of(&c))
            };
            report.push(ContainerReport {
                serves,
                id: c.id,
                stack: c.stack,
                service: c.service,
                generation: c.generation,
                address: c.address,
                state,
                cgroup_id,
            });
        }
        self.callers.replace(
            report
                .iter()
                .filter_map(|c| Some((c.cgroup_id?, as_caller(c))))
                .collect(),
        );
        Some(report)
    }
}

/// A container as a caller: the newest generation it runs for.
fn as_caller(c: &ContainerReport) -> LocalCaller {
    LocalCaller {
        stack: c.stack.clone(),
        service: c.service.clone(),
        generation: c.serves.iter().copied().max().unwrap_or(c.generation),
        address: c.address,
    }
}
