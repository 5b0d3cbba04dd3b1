//! Process metrics (RSS, CPU, open fds, threads), read when `/metrics` is scraped.
//!
//! The numbers come from `metrics_process::collector::collect()` (procfs on
//! Linux). They are written into the exposition by hand instead of through
//! `metrics_process::Collector`: that collector records CPU time with a `u64`
//! counter, i.e. in whole seconds, which makes `rate()` of an idle or lightly
//! loaded router read 0 and then jump. Prometheus counters are floats, so here
//! CPU keeps its fraction. Reading procfs takes tens of microseconds per scrape,
//! and nothing on the request path.

use std::fmt::Write;

/// Name, Prometheus type and help of each process family, in output order.
pub const PROCESS_FAMILIES: [(&str, &str, &str); 7] = [
    (CPU, "counter", "Total user and system CPU time of the router process."),
    (RSS, "gauge", "Resident memory of the router process."),
    (VIRTUAL, "gauge", "Virtual memory size of the router process."),
    (OPEN_FDS, "gauge", "Open file descriptors (sockets included)."),
    (MAX_FDS, "gauge", "The soft limit on open file descriptors (0: unlimited)."),
    (THREADS, "gauge", "OS threads of the router process."),
    (START_TIME, "gauge", "Start time of the process since the Unix epoch."),
];

const CPU: &str = "whatsapp_router_process_cpu_seconds_total";
const RSS: &str = "whatsapp_router_process_resident_memory_bytes";
const VIRTUAL: &str = "whatsapp_router_process_virtual_memory_bytes";
const OPEN_FDS: &str = "whatsapp_router_process_open_fds";
const MAX_FDS: &str = "whatsapp_router_process_max_fds";
const THREADS: &str = "whatsapp_router_process_threads";
const START_TIME: &str = "whatsapp_router_process_start_time_seconds";

/// Appends the process families to a Prometheus text exposition. A value the
/// platform cannot report is left out, family and all.
pub(super) fn render(out: &mut String) {
    let m = metrics_process::collector::collect();
    let as_f64 = |v: Option<u64>| v.map(|v| v as f64);
    let values = [
        m.cpu_seconds_total,
        as_f64(m.resident_memory_bytes),
        as_f64(m.virtual_memory_bytes),
        as_f64(m.open_fds),
        as_f64(m.max_fds),
        as_f64(m.threads),
        as_f64(m.start_time_seconds),
    ];
    for ((name, kind, help), value) in PROCESS_FAMILIES.iter().zip(values) {
        if let Some(value) = value {
            // Writing to a String cannot fail.
            let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n\n");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    fn reports_this_process() {
        // Burn some CPU so the counter has moved past its first tick.
        let spin = std::time::Instant::now();
        while spin.elapsed() < std::time::Duration::from_millis(50) {
            std::hint::black_box(spin.elapsed());
        }
        let mut text = String::new();
        render(&mut text);
        let value = |name: &str| -> f64 {
            let line = text.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_else(|| panic!("{text}"));
            line[name.len() + 1..].parse().unwrap()
        };
        assert!(value(RSS) > 1_000_000.0, "{text}");
        assert!(value(OPEN_FDS) >= 3.0, "{text}");
        assert!(value(THREADS) >= 1.0, "{text}");
        assert!(value(CPU) > 0.0, "{text}");
    }
}
