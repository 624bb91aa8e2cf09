//! wrk as the tests load the ingress with: a Lua hook prints every answer that is not a
//! 2xx with its body, so a failure says what went wrong, and the summary is checked for
//! socket errors and non-2xx answers.

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
};

use anyhow::{Context as _, Result, ensure};

/// A wrk run in the background.
pub struct Wrk {
    child: Child,
    script: PathBuf,
}

impl Wrk {
    /// Starts wrk on `http://target/` with `Host: host`, `connections` connections over
    /// two threads, for `duration` (wrk's syntax: `10s`, `10m`).
    pub fn start(target: SocketAddr, host: &str, connections: u32, duration: &str) -> Result<Self> {
        let script = std::env::temp_dir().join(format!(
            "ferry-wrk-{}-{}.lua",
            std::process::id(),
            crate::unique("")
        ));
        std::fs::write(
            &script,
            "response = function(status, headers, body)\n  if status >= 300 then io.write(\"status \" .. status .. \": \" .. body) end\nend\n",
        )
        .with_context(|| format!("writing {}", script.display()))?;
        let child = Command::new("wrk")
            .args(["-t2", &format!("-c{connections}"), &format!("-d{duration}")])
            .args(["--timeout", "5s", "-H", &format!("Host: {host}"), "-s"])
            .arg(&script)
            .arg(format!("http://{target}/"))
            .stdout(Stdio::piped())
            .spawn()
            .context("running wrk; `./x setup` installs it")?;
        Ok(Self { child, script })
    }

    /// Stops wrk now (SIGINT, after which it prints its summary); returns the summary.
    pub fn stop(self) -> Result<String> {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id())?);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT)?;
        self.wait()
    }

    /// Waits for the end of its duration; returns the summary.
    pub fn wait(mut self) -> Result<String> {
        let mut out = String::new();
        if let Some(mut stdout) = self.child.stdout.take() {
            std::io::Read::read_to_string(&mut stdout, &mut out)?;
        }
        self.child.wait()?;
        let _ = std::fs::remove_file(&self.script);
        Ok(out)
    }
}

/// The request count of wrk's `summary` (its `N requests in T` line).
pub fn requests(summary: &str) -> Option<u64> {
    summary
        .lines()
        .find_map(|l| l.split_once(" requests in "))
        .and_then(|(n, _)| n.trim().parse().ok())
}

/// The request count of wrk's `summary`; Err when it is below `at_least`, or when any
/// connection was refused, reset or timed out, or any answer was not a 2xx.
pub fn check(summary: &str, at_least: u64) -> Result<u64> {
    let requests =
        requests(summary).with_context(|| format!("wrk printed no request count:\n{summary}"))?;
    ensure!(requests >= at_least, "only {requests} requests:\n{summary}");
    ensure!(
        !summary.contains("Socket errors") && !summary.contains("Non-2xx"),
        "connections refused, reset or timed out, or requests failed:\n{summary}"
    );
    Ok(requests)
}

/// How many requests of wrk's `summary` failed: answers that were not a 2xx, and
/// connections refused, reset or timed out (wrk's `Non-2xx or 3xx responses: N` and
/// `Socket errors: connect A, read B, write C, timeout D`).
pub fn failures(summary: &str) -> u64 {
    let numbers = |text: &str| -> u64 {
        text.split(|c: char| !c.is_ascii_digit())
            .filter_map(|n| n.parse::<u64>().ok())
            .sum()
    };
    summary
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            l.strip_prefix("Non-2xx or 3xx responses:")
                .or_else(|| l.strip_prefix("Socket errors:"))
        })
        .map(numbers)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_add_up_non_2xx_answers_and_socket_errors() {
        let summary = "  1200 requests in 10.00s, 1.00MB read\n  Socket errors: connect 0, read 3, write 0, timeout 2\n  Non-2xx or 3xx responses: 4\n";
        assert_eq!(failures(summary), 9);
        assert_eq!(
            check(summary, 1)
                .map_err(|e| e.to_string())
                .unwrap_err()
                .lines()
                .next(),
            Some("connections refused, reset or timed out, or requests failed:")
        );
        assert_eq!(failures("  10 requests in 1.00s, 1KB read\n"), 0);
    }
}
