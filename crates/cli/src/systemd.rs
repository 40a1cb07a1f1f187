//! systemd's notification protocol for `Type=notify` units: `READY=1` once
//! the listeners are bound, `STOPPING=1` when a stop begins, and
//! `WATCHDOG=1` at half the unit's `WatchdogSec` from a task on the
//! process's async runtime (a runtime that stops making progress stops the
//! pings, and systemd restarts the process). Without `NOTIFY_SOCKET` (not
//! under systemd) each is a no-op.

use std::time::Duration;

use sd_notify::NotifyState;

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

/// The service is ready; `status` is shown by `systemctl status`.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// The service begins to stop.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("draining")]);
}

/// Starts the watchdog pings if the unit asks for them: `WATCHDOG_USEC`
/// set, and `WATCHDOG_PID` unset or this process's id, as
/// `sd_watchdog_enabled(3)` reads them.
pub fn watchdog() {
    let usec = std::env::var("WATCHDOG_USEC").ok();
    let pid = std::env::var("WATCHDOG_PID").ok();
    let Some(usec) = watchdog_usec(usec.as_deref(), pid.as_deref(), std::process::id()) else {
        return;
    };
    let every = Duration::from_micros(usec / 2).max(Duration::from_millis(10));
    tracing::info!(every_ms = every.as_millis(), "systemd watchdog on");
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            send(&[NotifyState::Watchdog]);
        }
    });
}

/// The watchdog interval asked for, if it applies to process `me`.
fn watchdog_usec(usec: Option<&str>, pid: Option<&str>, me: u32) -> Option<u64> {
    let usec: u64 = usec?.parse().ok().filter(|u| *u > 0)?;
    match pid {
        Some(p) if p.parse::<u32>().ok() != Some(me) => None,
        _ => Some(usec),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watchdog_applies_to_this_process_only() {
        assert_eq!(watchdog_usec(Some("200000"), None, 7), Some(200_000));
        assert_eq!(watchdog_usec(Some("200000"), Some("7"), 7), Some(200_000));
        assert_eq!(watchdog_usec(Some("200000"), Some("8"), 7), None);
        assert_eq!(watchdog_usec(Some("0"), None, 7), None);
        assert_eq!(watchdog_usec(Some("soon"), None, 7), None);
        assert_eq!(watchdog_usec(None, Some("7"), 7), None);
    }
}
