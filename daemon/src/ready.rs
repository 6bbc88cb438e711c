//! Readiness, told two ways at once: a line on stdout (`NAME: ready ...`, what scripts, tests
//! and the background parent wait for) and `sd_notify` (`READY=1`, for `Type=notify` units).
//! Also the other service-manager notifications: status text, reloading, stopping.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

static READY: AtomicBool = AtomicBool::new(false);

/// True once [`ready`] was called.
pub fn is_ready() -> bool {
    READY.load(Ordering::SeqCst)
}

/// Announces that the daemon serves: prints `line` (by convention `NAME: ready key=value...`)
/// on stdout and sends `READY=1` with `line` as status to systemd when run under it. A
/// background child's stdout (the waiting parent's pipe) then points at /dev/null, so later
/// output cannot fail.
pub fn ready(line: &str) {
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
    READY.store(true, Ordering::SeqCst);
    let _ = notify(&format!("READY=1\nSTATUS={}\nMAINPID={}", one_line(line), std::process::id()));
    if crate::background::is_child() {
        if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
            let _ = crate::sys::redirect(&null, 1);
        }
    }
    tracing::info!("{line}");
}

/// Free-form status for `systemctl status`.
pub fn status(text: &str) {
    let _ = notify(&format!("STATUS={}", one_line(text)));
}

/// Tells systemd the daemon is reloading its configuration (call [`reloaded`] after).
pub fn reloading() {
    let usec = monotonic_usec();
    let _ = notify(&format!("RELOADING=1\nMONOTONIC_USEC={usec}"));
}

/// Tells systemd a reload finished.
pub fn reloaded() {
    let _ = notify("READY=1");
}

/// Tells systemd the daemon is stopping.
pub fn stopping() {
    let _ = notify("STOPPING=1");
}

fn one_line(s: &str) -> String {
    s.replace('\n', " ")
}

fn monotonic_usec() -> u128 {
    // /proc/uptime has the monotonic clock's seconds with two decimals; good enough for
    // systemd's reload bookkeeping, which only compares it with its own reading.
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse::<f64>().ok()))
        .map(|s| (s * 1e6) as u128)
        .unwrap_or(0)
}

/// Sends one notification to `$NOTIFY_SOCKET` (a path, or `@name` for an abstract socket).
/// `Ok(false)` when not run under a service manager.
pub fn notify(state: &str) -> std::io::Result<bool> {
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else { return Ok(false) };
    let target = target.to_string_lossy().into_owned();
    let sock = UnixDatagram::unbound()?;
    let addr = if let Some(abs) = target.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        SocketAddr::from_abstract_name(abs.as_bytes())?
    } else {
        SocketAddr::from_pathname(&target)?
    };
    sock.send_to_addr(state.as_bytes(), &addr)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_reaches_a_path_socket() {
        let dir = std::env::temp_dir().join(format!("daemon-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let rx = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        // SAFETY of the test: the variable is only read by this test's thread.
        std::env::set_var("NOTIFY_SOCKET", &path);
        assert!(notify("READY=1\nSTATUS=x").unwrap());
        std::env::remove_var("NOTIFY_SOCKET");
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=x");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
