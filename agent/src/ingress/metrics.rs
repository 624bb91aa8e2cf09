//! What the ingress did, per service and container: requests by status class, bytes each
//! way and a latency histogram; plus refusals and open connections. Served in Prometheus's
//! text format.

use std::{
    collections::HashMap,
    fmt::Write as _,
    path::{Path, PathBuf},
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicI64, AtomicU64, Ordering},
    },
    time::Instant,
};

use tracing::warn;

use super::kernel::BackendNames;
use crate::dataplane::{L4Table, PortTraffic};

/// Upper bounds (seconds) of the latency histogram's buckets; +Inf is implied.
const BUCKETS: [f64; 10] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0];

/// One request as it is counted.
#[derive(Debug)]
pub struct Exchange<'a> {
    service: &'a str,
    container: &'a str,
    started: Instant,
    /// The final status (0: no response reached the client).
    pub status: u16,
    /// Request body bytes.
    pub bytes_in: u64,
    /// Response body bytes.
    pub bytes_out: u64,
}

impl<'a> Exchange<'a> {
    /// A request to `container` of `service`, started at `started`.
    pub fn new(service: &'a str, container: &'a str, started: Instant) -> Self {
        Self {
            service,
            container,
            started,
            status: 0,
            bytes_in: 0,
            bytes_out: 0,
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    /// By status class: none, 1xx .. 5xx.
    statuses: [u64; 6],
    bytes_in: u64,
    bytes_out: u64,
    buckets: [u64; BUCKETS.len()],
    count: u64,
    seconds: f64,
}

/// The ingress's figures.
#[derive(Debug, Default)]
pub struct Metrics {
    by_service: Mutex<HashMap<String, HashMap<String, Counters>>>,
    refused: Mutex<HashMap<u16, u64>>,
    /// L4 connections by (service, container): count, bytes in, bytes out.
    relayed: Mutex<HashMap<(String, String), [u64; 3]>>,
    open: AtomicI64,
    accepted: AtomicU64,
    /// The kernel path's counters: the maps' directory, and whose each backend address is.
    kernel: Option<(PathBuf, BackendNames)>,
}

/// Counts an open connection until dropped.
pub struct Open<'a>(&'a Metrics);

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Metrics {
    /// Also renders the L4 kernel path's counters, read from the maps in `map_dir`.
    pub fn count_kernel(&mut self, map_dir: PathBuf) {
        self.kernel = Some((map_dir, BackendNames::default()));
    }

    /// Where the kernel path records whose each backend address is (a fresh table when
    /// the kernel's counters are not rendered).
    pub(super) fn kernel_names(&self) -> BackendNames {
        self.kernel
            .as_ref()
            .map(|(_, names)| names.clone())
            .unwrap_or_default()
    }

    /// Counts a connection as open for the guard's life.
    pub fn connection_opened(&self) -> Open<'_> {
        self.open.fetch_add(1, Ordering::Relaxed);
        self.accepted.fetch_add(1, Ordering::Relaxed);
        Open(self)
    }

    /// Connections open now.
    pub fn open_connections(&self) -> i64 {
        self.open.load(Ordering::Relaxed)
    }

    /// Counts a request refused with `status` before it reached a backend.
    pub fn refused(&self, status: u16) {
        *self
            .refused
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(status)
            .or_default() += 1;
    }

    /// Counts a finished L4 connection and its bytes each way.
    pub fn relayed(&self, service: &str, container: &str, bytes_in: u64, bytes_out: u64) {
        let mut relayed = self.relayed.lock().unwrap_or_else(PoisonError::into_inner);
        let c = relayed
            .entry((service.to_string(), container.to_string()))
            .or_default();
        c[0] += 1;
        c[1] += bytes_in;
        c[2] += bytes_out;
    }

    /// Counts a finished request.
    pub fn record(&self, exchange: &Exchange<'_>) {
        let seconds = exchange.started.elapsed().as_secs_f64();
        let mut all = self
            .by_service
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let service = match all.get_mut(exchange.service) {
            Some(s) => s,
            None => all.entry(exchange.service.to_string()).or_default(),
        };
        let c = match service.get_mut(exchange.container) {
            Some(c) => c,
            None => service.entry(exchange.container.to_string()).or_default(),
        };
        c.statuses[usize::from(exchange.status / 100).min(5)] += 1;
        c.bytes_in += exchange.bytes_in;
        c.bytes_out += exchange.bytes_out;
        if let Some(i) = BUCKETS.iter().position(|b| seconds <= *b) {
            c.buckets[i] += 1;
        }
        c.count += 1;
        c.seconds += seconds;
    }

    /// The figures in Prometheus's text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let all = self
            .by_service
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut rows: Vec<(&String, &String, &Counters)> = all
            .iter()
            .flat_map(|(s, cs)| cs.iter().map(move |(c, n)| (s, c, n)))
            .collect();
        rows.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        let _ = writeln!(
            out,
            "# HELP ferry_ingress_requests_total Requests relayed, by status class.\n# TYPE ferry_ingress_requests_total counter"
        );
        for (s, c, n) in &rows {
            for (class, count) in n.statuses.iter().enumerate() {
                if *count > 0 {
                    let code = if class == 0 {
                        "none".to_string()
                    } else {
                        format!("{class}xx")
                    };
                    let _ = writeln!(
                        out,
                        "ferry_ingress_requests_total{{service=\"{s}\",container=\"{c}\",code=\"{code}\"}} {count}"
                    );
                }
            }
        }
        counter_per_row(
            &mut out,
            &rows,
            "ferry_ingress_request_bytes_total",
            "Request body bytes sent to containers.",
            |n| n.bytes_in,
        );
        counter_per_row(
            &mut out,
            &rows,
            "ferry_ingress_response_bytes_total",
            "Response body bytes sent to clients.",
            |n| n.bytes_out,
        );
        let _ = writeln!(
            out,
            "# HELP ferry_ingress_request_duration_seconds From the request head to the end of the response.\n# TYPE ferry_ingress_request_duration_seconds histogram"
        );
        for (s, c, n) in &rows {
            let mut cumulative = 0;
            for (bound, count) in BUCKETS.iter().zip(n.buckets) {
                cumulative += count;
                let _ = writeln!(
                    out,
                    "ferry_ingress_request_duration_seconds_bucket{{service=\"{s}\",container=\"{c}\",le=\"{bound}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                out,
                "ferry_ingress_request_duration_seconds_bucket{{service=\"{s}\",container=\"{c}\",le=\"+Inf\"}} {}",
                n.count
            );
            let _ = writeln!(
                out,
                "ferry_ingress_request_duration_seconds_sum{{service=\"{s}\",container=\"{c}\"}} {}",
                n.seconds
            );
            let _ = writeln!(
                out,
                "ferry_ingress_request_duration_seconds_count{{service=\"{s}\",container=\"{c}\"}} {}",
                n.count
            );
        }
        drop(all);
        let _ = writeln!(
            out,
            "# HELP ferry_ingress_refused_total Requests answered by ferry itself, by status.\n# TYPE ferry_ingress_refused_total counter"
        );
        let refused = self.refused.lock().unwrap_or_else(PoisonError::into_inner);
        let mut codes: Vec<_> = refused.iter().collect();
        codes.sort();
        for (code, count) in codes {
            let _ = writeln!(
                out,
                "ferry_ingress_refused_total{{code=\"{code}\"}} {count}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP ferry_ingress_open_connections Client connections open now.\n# TYPE ferry_ingress_open_connections gauge\nferry_ingress_open_connections {}",
            self.open_connections()
        );
        let _ = writeln!(
            out,
            "# HELP ferry_ingress_connections_total Client connections accepted.\n# TYPE ferry_ingress_connections_total counter\nferry_ingress_connections_total {}",
            self.accepted.load(Ordering::Relaxed)
        );
        if let Some((map_dir, names)) = &self.kernel {
            render_kernel(&mut out, map_dir, names);
        }
        out
    }
}

/// The L4 kernel path's flows and bytes per port and backend, summed over CPUs.
fn render_kernel(out: &mut String, map_dir: &Path, names: &BackendNames) {
    let traffic = match L4Table::open(map_dir).and_then(|table| table.traffic()) {
        Ok(traffic) => traffic,
        Err(e) => {
            warn!("the L4 kernel counters could not be read: {e}");
            return;
        }
    };
    let names = names.lock().unwrap_or_else(PoisonError::into_inner);
    let rows: Vec<(String, PortTraffic)> = traffic
        .into_iter()
        .map(|((protocol, port, backend), figures)| {
            let (service, container) = names
                .get(&backend)
                .map_or(("", ""), |(s, c)| (s.as_str(), c.as_str()));
            let labels = format!(
                "protocol=\"{}\",port=\"{port}\",backend=\"{backend}\",service=\"{service}\",container=\"{container}\"",
                protocol.name()
            );
            (labels, figures)
        })
        .collect();
    drop(names);
    let _ = writeln!(
        out,
        "# HELP ferry_l4_kernel_flows_total Flows the kernel steered to a backend of a tcp: or udp: port.\n# TYPE ferry_l4_kernel_flows_total counter"
    );
    for (labels, figures) in &rows {
        let _ = writeln!(
            out,
            "ferry_l4_kernel_flows_total{{{labels}}} {}",
            figures.flows
        );
    }
    let _ = writeln!(
        out,
        "# HELP ferry_l4_kernel_bytes_total Bytes (whole packets) the kernel moved for a tcp: or udp: port, by direction.\n# TYPE ferry_l4_kernel_bytes_total counter"
    );
    for (labels, figures) in &rows {
        let _ = writeln!(
            out,
            "ferry_l4_kernel_bytes_total{{{labels},direction=\"in\"}} {}\nferry_l4_kernel_bytes_total{{{labels},direction=\"out\"}} {}",
            figures.bytes_in, figures.bytes_out
        );
    }
}

/// One counter family with a value per (service, container) row.
fn counter_per_row(
    out: &mut String,
    rows: &[(&String, &String, &Counters)],
    name: &str,
    help: &str,
    value: impl Fn(&Counters) -> u64,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
    for (s, c, n) in rows {
        let _ = writeln!(
            out,
            "{name}{{service=\"{s}\",container=\"{c}\"}} {}",
            value(n)
        );
    }
}
