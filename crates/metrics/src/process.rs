//! `process_*` metrics as client_golang names them, read from Linux's `/proc/self`
//! (the parsing is pure; [`append`] does the reads).

use std::fmt::Write;

/// USER_HZ, the unit of `/proc/<pid>/stat` times, is 100 on every Linux architecture we run on.
const CLOCK_TICKS_PER_SECOND: f64 = 100.0;

/// Appends `process_cpu_seconds_total`, `process_resident_memory_bytes`, `process_open_fds` and
/// `process_max_fds` for this process; what cannot be read is left out.
pub fn append(out: &mut String) {
    let stat = std::fs::read_to_string("/proc/self/stat").ok();
    let status = std::fs::read_to_string("/proc/self/status").ok();
    let limits = std::fs::read_to_string("/proc/self/limits").ok();
    let open_fds = std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|d| d.count() as u64);
    let cpu = stat.as_deref().and_then(cpu_seconds);
    let rss = status.as_deref().and_then(resident_bytes);
    let max_fds = limits.as_deref().and_then(max_open_files);
    write(
        out,
        "process_cpu_seconds_total",
        "counter",
        "Total user and system CPU time spent in seconds.",
        cpu.map(|v| format!("{v}")),
    );
    write(
        out,
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size in bytes.",
        rss.map(|v| v.to_string()),
    );
    write(
        out,
        "process_open_fds",
        "gauge",
        "Number of open file descriptors.",
        open_fds.map(|v| v.to_string()),
    );
    write(
        out,
        "process_max_fds",
        "gauge",
        "Maximum number of open file descriptors.",
        max_fds.map(|v| v.to_string()),
    );
}

fn write(out: &mut String, name: &str, kind: &str, help: &str, value: Option<String>) {
    if let Some(v) = value {
        let _ = write!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n"
        );
    }
}

/// utime + stime (fields 14 and 15) of `/proc/self/stat`, in seconds. The command name (field 2)
/// may hold spaces, so fields are counted after its closing parenthesis.
fn cpu_seconds(stat: &str) -> Option<f64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: f64 = fields.next()?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    Some((utime + stime) / CLOCK_TICKS_PER_SECOND)
}

fn resident_bytes(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn max_open_files(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_proc_formats() {
        let stat = "1234 (kuma cp) S 1 1234 1234 0 -1 4194560 500 0 0 0 250 75 0 0 20 0 8 0 100";
        assert_eq!(cpu_seconds(stat), Some(3.25));
        assert_eq!(
            resident_bytes("Name:\tx\nVmRSS:\t  2048 kB\n"),
            Some(2 * 1024 * 1024)
        );
        let limits = "Limit                     Soft Limit           Hard Limit           Units\nMax open files            1024                 524288               files\n";
        assert_eq!(max_open_files(limits), Some(1024));
    }

    #[test]
    fn this_process_is_described() {
        let mut out = String::new();
        append(&mut out);
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_max_fds",
        ] {
            assert!(out.contains(&format!("# TYPE {name} ")), "{name} in {out}");
        }
    }
}
