//! Container logs as `ferry containers logs` and `ferry services logs` show them: the last
//! lines of each container, and with `--follow` what each writes next, until interrupted.
//!
//! Logs come through central's relay to each container's agent (central never reaches a
//! Docker Engine). Following asks every second for the lines written since the last one
//! shown, with Docker's timestamps to drop those already shown (Docker's `since` counts
//! whole seconds); a deploy's new containers of the service join the stream as they
//! appear, and one that is gone says so once.

use std::{collections::BTreeMap, time::Duration};

use anyhow::{Context as _, Result};
use ferry_api::{
    client::Client,
    types::{ActionKind, ContainerReport, MAX_LOG_LINES},
};

/// How often a followed log is asked again.
const POLL: Duration = Duration::from_secs(1);

/// Which containers to show.
pub enum Select {
    /// One container: (server, its report).
    One(String, ContainerReport),
    /// Every container of a stack's service, on every server.
    Service { stack: String, service: String },
}

/// One container being shown.
struct Shown {
    server: String,
    /// The newest timestamp printed (RFC 3339, as Docker writes it).
    last: Option<String>,
    gone: bool,
}

/// Prints the last `lines` lines of the selected containers (each prefixed with its server
/// and id when there may be several), then, with `follow`, keeps printing.
pub async fn show(client: &Client, select: Select, lines: u32, follow: bool) -> Result<()> {
    let prefixed = matches!(select, Select::Service { .. });
    let mut shown: BTreeMap<String, Shown> = BTreeMap::new();
    let mut first = true;
    loop {
        for (server, id) in targets(client, &select).await? {
            shown.entry(id).or_insert(Shown {
                server,
                last: None,
                gone: false,
            });
        }
        if shown.is_empty() && !follow {
            match &select {
                Select::Service { stack, service } => {
                    anyhow::bail!(
                        "no container of {service} in {stack}; see `ferry services list --stack {stack}`"
                    )
                }
                Select::One(..) => return Ok(()),
            }
        }
        for (id, one) in shown.iter_mut().filter(|(_, s)| !s.gone) {
            let since = match &one.last {
                Some(last) => Some(seconds(last)?),
                None => None,
            };
            let kind = ActionKind::Logs {
                lines: if one.last.is_none() && first {
                    lines
                } else {
                    MAX_LOG_LINES
                },
                since,
                timestamps: true,
            };
            let result = match client.container_action(&one.server, id, &kind).await {
                Ok(result) if result.ok => result,
                // Its agent no longer has it: removed, by a deploy or an operator.
                Ok(_) if follow => {
                    println!("[{} {}] (the container is gone)", one.server, short(id));
                    one.gone = true;
                    continue;
                }
                Ok(result) => anyhow::bail!("{}", result.output.trim_end()),
                // Central or the agent out of reach for a moment: ask again next time.
                Err(e) if follow => {
                    eprintln!("[{} {}] (asking again: {e})", one.server, short(id));
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            for line in result.output.lines() {
                let (stamp, text) = line.split_once(' ').unwrap_or((line, ""));
                if one.last.as_deref().is_some_and(|last| stamp <= last) {
                    continue;
                }
                if prefixed {
                    println!("[{} {}] {text}", one.server, short(id));
                } else {
                    println!("{text}");
                }
                one.last = Some(stamp.to_string());
            }
        }
        first = false;
        if !follow {
            return Ok(());
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The (server, container id) pairs `select` names now.
async fn targets(client: &Client, select: &Select) -> Result<Vec<(String, String)>> {
    Ok(match select {
        Select::One(server, report) => vec![(server.clone(), report.id.clone())],
        Select::Service { stack, service } => client
            .containers()
            .await?
            .into_iter()
            .flat_map(|(server, cs)| {
                cs.into_iter()
                    .filter(|c| c.stack == *stack && c.service == *service)
                    .map(move |c| (server.clone(), c.id))
            })
            .collect(),
    })
}

/// Whole Unix seconds of a Docker timestamp such as `2026-11-29T18:00:01.123456789Z`.
fn seconds(stamp: &str) -> Result<i64> {
    let at: jiff::Timestamp = stamp
        .parse()
        .with_context(|| format!("an agent sent a log line stamped {stamp:?}"))?;
    Ok(at.as_second())
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_docker_timestamps() {
        assert_eq!(
            super::seconds("1970-01-01T00:01:40.5Z").unwrap(),
            100,
            "whole seconds, rounded down"
        );
        assert!(super::seconds("yesterday").is_err());
    }
}
