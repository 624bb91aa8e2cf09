//! What the benchmark binaries share: reading their numeric flags, a process's CPU time,
//! and turning runs into the figures they print (medians; ratios per run, so drift between
//! runs cancels out).

use anyhow::{Context as _, Result};

/// The number after `name` in `args`, if the flag is there.
pub fn flag<T: std::str::FromStr>(args: &[String], name: &str) -> Result<Option<T>> {
    match args.iter().position(|a| a == name) {
        Some(i) => Ok(Some(
            args.get(i + 1)
                .with_context(|| format!("{name} needs a number"))?
                .parse()
                .ok()
                .with_context(|| format!("{name} takes a number"))?,
        )),
        None => Ok(None),
    }
}

/// The median of `values` (the upper one of an even count); 0 for none.
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// The median over runs of `figure(a) / figure(b)`, `a` and `b` measured in the same run.
pub fn paired<T>(a: &[T], b: &[T], figure: impl Fn(&T) -> f64) -> f64 {
    median(
        a.iter()
            .zip(b)
            .map(|(x, y)| figure(x) / figure(y))
            .collect(),
    )
}

/// The number after the word `label` in `text` (as the bench clients print `p50 12.3`).
pub fn labelled(text: &str, label: &str) -> Result<f64> {
    text.split_whitespace()
        .skip_while(|w| *w != label)
        .nth(1)
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no {label} in: {text}"))
}

/// utime + stime of process `pid`, in clock ticks.
pub fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').context("odd /proc stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11).context("no utime")?.parse()?;
    let stime: u64 = fields.get(12).context("no stime")?.parse()?;
    Ok(utime + stime)
}

/// `wrk`'s figure after `label`, e.g. `Requests/sec: 31234.5`.
pub fn wrk_figure(text: &str, label: &str) -> Result<f64> {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(label))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("wrk printed no {label}:\n{text}"))
}
