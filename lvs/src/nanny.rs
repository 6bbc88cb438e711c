//! Health checks ("nanny"): one loop per real server of each virtual service.
//!
//! Every `check_interval` a check runs, bounded by `timeout`:
//!
//! - `send`/`expect`: connect (TCP, or a datagram for UDP services), send the `send` bytes,
//!   and compare the reply: it must start with `expect`, or match it as a regular
//!   expression with `use_regex = 1`, or carry the HTTP status `expect_status`. Without
//!   `expect`, a successful connect (TCP) or any reply (UDP) is enough.
//! - `send_program`: run it through `sh -c` with `%h` replaced by the server address; it
//!   must exit 0 (and print something matching `expect`, if set).
//! - `weight_program` (extension): exit 0 keeps the configured weight; exit 100+N
//!   (N = 0..=155) means healthy with weight N; any other status is a failure.
//!
//! A failure takes the server out at once: removed from the service, or set to weight 0
//! when `quiesce_server` is on. It comes back once it has passed checks for `reentry`
//! without a failure in between. The decision logic ([`Health`]) is sans-IO.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{info, warn};

use crate::config::{LvsConfig, RealServerConf, VirtualConf};
use crate::model::{Protocol, ServiceKey};
use crate::proxy::Shared;
use crate::sched::Millis;
use crate::table::DestSpec;

/// Result of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckResult {
    /// Healthy; `Some(w)` when the check asks for weight `w`.
    Up(Option<i32>),
    /// Failed.
    Down,
}

/// What the table should do after a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthAction {
    /// Take the server out (remove, or weight 0 with quiesce_server).
    Fail,
    /// Put it back with this weight.
    Restore(i32),
    /// Change the weight of a healthy server (weight_program).
    Reweight(i32),
}

/// Per-server health state machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// Whether the server is in service.
    pub up: bool,
    weight: i32,
    configured: i32,
    reentry_ms: Millis,
    first_success_ms: Option<Millis>,
}

impl Health {
    /// A server starting in service with `weight`.
    pub fn new(weight: i32, reentry_ms: Millis) -> Health {
        Health { up: true, weight, configured: weight, reentry_ms, first_success_ms: None }
    }

    /// Feeds one check result.
    pub fn on_result(&mut self, r: CheckResult, now_ms: Millis) -> Option<HealthAction> {
        match (self.up, r) {
            (true, CheckResult::Down) => {
                self.up = false;
                self.first_success_ms = None;
                Some(HealthAction::Fail)
            }
            (true, CheckResult::Up(w)) => {
                let w = w.unwrap_or(self.configured);
                (w != self.weight).then(|| {
                    self.weight = w;
                    HealthAction::Reweight(w)
                })
            }
            (false, CheckResult::Down) => {
                self.first_success_ms = None;
                None
            }
            (false, CheckResult::Up(w)) => {
                let first = *self.first_success_ms.get_or_insert(now_ms);
                if now_ms.saturating_sub(first) >= self.reentry_ms {
                    self.up = true;
                    self.first_success_ms = None;
                    self.weight = w.unwrap_or(self.configured);
                    Some(HealthAction::Restore(self.weight))
                } else {
                    None
                }
            }
        }
    }
}

/// Does `reply` satisfy the virtual's expectation?
pub fn reply_matches(v: &VirtualConf, reply: &[u8]) -> bool {
    if let Some(status) = v.expect_status {
        return http_status(reply) == Some(status);
    }
    match &v.expect {
        None => true,
        Some(e) if v.use_regex => {
            regex::bytes::Regex::new(&String::from_utf8_lossy(e)).map(|re| re.is_match(reply)).unwrap_or(false)
        }
        Some(e) => reply.starts_with(e),
    }
}

/// The status code of an HTTP response's status line (`HTTP/1.1 200 OK`).
pub fn http_status(reply: &[u8]) -> Option<u16> {
    let line = reply.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut f = line.split_whitespace();
    if !f.next()?.starts_with("HTTP/") {
        return None;
    }
    f.next()?.parse().ok()
}

fn expect_done(v: &VirtualConf, got: &[u8]) -> bool {
    match (&v.expect, v.expect_status) {
        (_, Some(_)) => got.contains(&b'\n'),
        (Some(e), None) if !v.use_regex => got.len() >= e.len(),
        _ => false,
    }
}

/// Runs one check of `server` (no timeout of its own; the caller bounds it).
pub async fn check_once(v: &VirtualConf, server: &RealServerConf) -> CheckResult {
    let addr = v.check_addr(server);
    if let Some(prog) = &v.weight_program {
        return run_program(prog, addr, None, true).await;
    }
    if let Some(prog) = &v.send_program {
        return run_program(prog, addr, Some(v), false).await;
    }
    match v.protocol {
        Protocol::Tcp => check_tcp(v, addr).await,
        Protocol::Udp => check_udp(v, addr).await,
    }
}

async fn check_tcp(v: &VirtualConf, addr: SocketAddr) -> CheckResult {
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else { return CheckResult::Down };
    if let Some(send) = &v.send {
        if s.write_all(send).await.is_err() {
            return CheckResult::Down;
        }
    }
    if v.expect.is_none() && v.expect_status.is_none() {
        return CheckResult::Up(None);
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if reply_matches(v, &got) && (expect_done(v, &got) || v.use_regex) {
            return CheckResult::Up(None);
        }
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                if got.len() > 65536 {
                    break;
                }
            }
        }
    }
    if reply_matches(v, &got) {
        CheckResult::Up(None)
    } else {
        CheckResult::Down
    }
}

async fn check_udp(v: &VirtualConf, addr: SocketAddr) -> CheckResult {
    let any: SocketAddr = if addr.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().expect("literal");
    let Ok(s) = tokio::net::UdpSocket::bind(any).await else { return CheckResult::Down };
    if s.connect(addr).await.is_err() {
        return CheckResult::Down;
    }
    let payload = v.send.clone().unwrap_or_default();
    if s.send(&payload).await.is_err() {
        return CheckResult::Down;
    }
    let mut buf = vec![0u8; 65536];
    match s.recv(&mut buf).await {
        Ok(n) if reply_matches(v, &buf[..n]) => CheckResult::Up(None),
        _ => CheckResult::Down,
    }
}

async fn run_program(prog: &str, addr: SocketAddr, v: Option<&VirtualConf>, weight: bool) -> CheckResult {
    let cmd = prog.replace("%h", &addr.ip().to_string()).replace("%p", &addr.port().to_string());
    let child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(&cmd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn();
    let Ok(child) = child else { return CheckResult::Down };
    let Ok(out) = child.wait_with_output().await else { return CheckResult::Down };
    let code = out.status.code();
    if weight {
        return match code {
            Some(0) => CheckResult::Up(None),
            Some(c) if (100..=255).contains(&c) => CheckResult::Up(Some(c - 100)),
            _ => CheckResult::Down,
        };
    }
    match (code, v) {
        (Some(0), Some(v)) if v.expect.is_some() => {
            if reply_matches(v, &out.stdout) {
                CheckResult::Up(None)
            } else {
                CheckResult::Down
            }
        }
        (Some(0), _) => CheckResult::Up(None),
        _ => CheckResult::Down,
    }
}

fn apply(shared: &Shared, key: &ServiceKey, v: &VirtualConf, s: &RealServerConf, action: HealthAction) {
    let addr = v.dest_addr(s);
    let mut d = shared.lock();
    let r = match action {
        HealthAction::Fail if v.quiesce_server => d.set_weight(key, addr, 0),
        HealthAction::Fail => d.delete_dest(key, addr),
        HealthAction::Reweight(w) => d.set_weight(key, addr, w),
        HealthAction::Restore(w) => {
            if d.service(key).is_some_and(|svc| svc.dests.iter().any(|x| x.addr == addr)) {
                d.set_weight(key, addr, w)
            } else {
                let mut ds = DestSpec::new(addr);
                ds.weight = w;
                ds.u_threshold = s.u_threshold;
                ds.l_threshold = s.l_threshold;
                d.add_dest(key, ds)
            }
        }
    };
    match r {
        Ok(()) => info!(service = %key, server = %addr, action = ?action, "health check changed the table"),
        Err(e) => warn!(service = %key, server = %addr, error = %e, "health check could not change the table"),
    }
}

/// Starts one check loop per active real server of every active virtual.
pub fn spawn_all(shared: Arc<Shared>, cfg: &LvsConfig) -> Vec<tokio::task::JoinHandle<()>> {
    let mut handles = Vec::new();
    for v in cfg.virtuals.iter().filter(|v| v.active) {
        for s in v.servers.iter().filter(|s| s.active) {
            handles.push(spawn_one(shared.clone(), v, s));
        }
    }
    handles
}

/// Starts the check loop of one real server `s` of virtual `v` (it starts in service).
pub fn spawn_one(shared: Arc<Shared>, v: &VirtualConf, s: &RealServerConf) -> tokio::task::JoinHandle<()> {
    let (v, s) = (Arc::new(v.clone()), s.clone());
    tokio::spawn(async move { check_loop(shared, v, s).await })
}

async fn check_loop(shared: Arc<Shared>, v: Arc<VirtualConf>, s: RealServerConf) {
    let key = v.key();
    let mut health = Health::new(s.weight, v.reentry_ms);
    let interval = Duration::from_millis(v.check_interval_ms);
    let timeout = Duration::from_millis(v.timeout_ms);
    loop {
        let started = tokio::time::Instant::now();
        let r = match tokio::time::timeout(timeout, check_once(&v, &s)).await {
            Ok(r) => r,
            Err(_) => CheckResult::Down,
        };
        if let Some(action) = health.on_result(r, shared.now_ms()) {
            apply(&shared, &key, &v, &s, action);
        }
        tokio::time::sleep_until(started + interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fail_then_reentry() {
        let mut h = Health::new(3, 1000);
        assert_eq!(h.on_result(CheckResult::Up(None), 0), None);
        assert_eq!(h.on_result(CheckResult::Down, 100), Some(HealthAction::Fail));
        assert_eq!(h.on_result(CheckResult::Down, 200), None);
        assert_eq!(h.on_result(CheckResult::Up(None), 300), None);
        assert_eq!(h.on_result(CheckResult::Up(None), 800), None);
        // A failure restarts the reentry clock.
        assert_eq!(h.on_result(CheckResult::Down, 900), None);
        assert_eq!(h.on_result(CheckResult::Up(None), 1000), None);
        assert_eq!(h.on_result(CheckResult::Up(None), 1999), None);
        assert_eq!(h.on_result(CheckResult::Up(None), 2000), Some(HealthAction::Restore(3)));
        assert!(h.up);
    }

    #[test]
    fn weight_program_reweights() {
        let mut h = Health::new(3, 0);
        assert_eq!(h.on_result(CheckResult::Up(Some(5)), 0), Some(HealthAction::Reweight(5)));
        assert_eq!(h.on_result(CheckResult::Up(Some(5)), 1), None);
        assert_eq!(h.on_result(CheckResult::Up(None), 2), Some(HealthAction::Reweight(3)));
    }

    #[test]
    fn matching() {
        let mut v = crate::LvsConfig::parse("virtual a {\n address = 1.2.3.4\n port = 80\n expect = \"HTTP\"\n}\n")
            .unwrap()
            .virtuals
            .remove(0);
        assert!(reply_matches(&v, b"HTTP/1.0 200 OK\r\n"));
        assert!(!reply_matches(&v, b"xHTTP"));
        v.use_regex = true;
        v.expect = Some(b"^HTTP/1\\.[01] [23]\\d\\d".to_vec());
        assert!(reply_matches(&v, b"HTTP/1.1 302 Found\r\n"));
        assert!(!reply_matches(&v, b"HTTP/1.1 500 Oops\r\n"));
        v.expect = None;
        v.use_regex = false;
        v.expect_status = Some(200);
        assert!(reply_matches(&v, b"HTTP/1.1 200 OK\r\n"));
        assert!(!reply_matches(&v, b"HTTP/1.1 503 Busy\r\n"));
        assert_eq!(http_status(b"garbage"), None);
    }
}
