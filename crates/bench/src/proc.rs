//! CPU time, peak memory and disk writes of a child process, from Linux's
//! `/proc`.

use std::path::Path;

/// What the kernel has counted for one process so far.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sample {
    /// User plus system CPU time, in seconds.
    pub cpu_s: f64,
    /// Bytes the process caused to be written to storage.
    pub write_bytes: u64,
}

/// Reads the CPU time and storage writes of `pid`; `None` if it is gone or
/// `/proc` is not there.
pub fn sample(pid: u32) -> Option<Sample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let cpu_s = cpu_seconds(&stat, rustix::param::clock_ticks_per_second())?;
    let write_bytes = std::fs::read_to_string(format!("/proc/{pid}/io"))
        .ok()
        .and_then(|io| field(&io, "write_bytes:"))
        .unwrap_or(0);
    Some(Sample { cpu_s, write_bytes })
}

/// `utime + stime` of a `/proc/<pid>/stat` line, in seconds. The command
/// name (field 2) may hold spaces and parentheses, so fields are counted
/// from the last `)`.
fn cpu_seconds(stat: &str, ticks_per_s: u64) -> Option<f64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, utime field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / ticks_per_s.max(1) as f64)
}

/// The number after `name` in a `key: value` file such as
/// `/proc/<pid>/status` (kB values are returned as written).
fn field(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// The peak resident set size of `pid` since it started or since the last
/// [`reset_peak_rss`], in bytes: the kernel's high-water mark, or the RSS
/// now if that is higher (the kernel raises the mark only at some events,
/// so it can trail the current RSS).
pub fn peak_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let hwm = field(&status, "VmHWM:")?;
    Some(hwm.max(field(&status, "VmRSS:").unwrap_or(0)) * 1024)
}

/// The resident set size of `pid` now, in bytes.
pub fn rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    field(&status, "VmRSS:").map(|kb| kb * 1024)
}

/// Restarts the peak RSS count of `pid` from its current RSS (Linux: `5` to
/// `clear_refs`). False if the kernel refused.
pub fn reset_peak_rss(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// The bytes of every file under `dir`.
pub fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            Ok(_) => e.metadata().map(|m| m.len()).unwrap_or(0),
            Err(_) => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_is_read_after_the_command_name_whatever_it_holds() {
        let stat =
            "4242 (liai son) (x)) S 1 4242 4242 0 -1 4194560 1 0 0 0 250 50 0 0 20 0 1 0 1 1 1";
        assert_eq!(cpu_seconds(stat, 100), Some(3.0));
        assert_eq!(cpu_seconds("4242 (x) S 1", 100), None);
    }

    #[test]
    fn this_process_has_a_cpu_time_and_a_peak() {
        let me = std::process::id();
        assert!(sample(me).is_some());
        assert!(peak_rss(me).unwrap_or(0) > 0);
        assert_eq!(field("VmHWM:\t  1234 kB\n", "VmHWM:"), Some(1234));
    }
}
