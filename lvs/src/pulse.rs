//! pulse: the director pair's heartbeat and failover.
//!
//! Both directors run pulse. Every `keepalive` each sends the other a heartbeat saying
//! whether it is active, and its *generation*: the count of takeovers it knows of. The
//! decision logic ([`Pulse`]) is sans-IO; the driver ([`run`]) moves datagrams, brings the
//! virtual addresses up or down (`ip addr`), announces them with gratuitous ARP (`arping -U`)
//! and starts or stops `lvsd`.
//!
//! Rules:
//!
//! - A standby that hears nothing from its peer for `deadtime` takes over (generation =
//!   highest seen + 1). At start-up, alone, it waits `deadtime` too.
//! - Both standby (a fresh start of the pair): the primary takes over at once.
//! - A returning director hears an active peer and stays standby: no failback unless told
//!   (`pulse --takeover`, or SIGUSR1 to a running pulse, takes over with a higher
//!   generation).
//! - Split brain (both active, after a partition heals): the higher generation stays
//!   active; equal generations keep the primary. The other steps down at once.
//!
//! Heartbeat datagram (16 bytes, big-endian): `"LVSH"`, version 1 (u8), kind 1 = heartbeat
//! (u8), state (u8: 0 standby, 1 active), role (u8: 0 primary, 1 backup), generation (u32),
//! serial_no of the lvs.cf (u32, low 32 bits).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tracing::{info, warn};

use crate::config::LvsConfig;
use crate::sched::Millis;

/// Heartbeat magic.
pub const HB_MAGIC: &[u8; 4] = b"LVSH";
/// Heartbeat length.
pub const HB_LEN: usize = 16;

/// Which director of the pair this is (from `primary`/`backup` in lvs.cf).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The `primary` address.
    Primary,
    /// The `backup` address.
    Backup,
}

/// A heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heartbeat {
    /// The sender runs the director.
    pub active: bool,
    /// The sender's role.
    pub role: Role,
    /// Takeovers the sender knows of.
    pub generation: u32,
    /// serial_no of the sender's lvs.cf.
    pub serial: u32,
}

/// A datagram that is not a heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeartbeatError {
    /// Wrong length.
    #[error("heartbeat of {0} bytes (expected 16)")]
    Length(usize),
    /// Wrong magic or version.
    #[error("not an lvs heartbeat (bad magic or version)")]
    Magic,
    /// An unknown kind, state or role.
    #[error("bad heartbeat field {field} = {value}")]
    Field {
        /// Which.
        field: &'static str,
        /// Its value.
        value: u8,
    },
}

impl Heartbeat {
    /// Encodes into 16 bytes.
    pub fn encode(&self) -> [u8; HB_LEN] {
        let mut b = [0u8; HB_LEN];
        b[..4].copy_from_slice(HB_MAGIC);
        b[4] = 1;
        b[5] = 1;
        b[6] = u8::from(self.active);
        b[7] = match self.role {
            Role::Primary => 0,
            Role::Backup => 1,
        };
        b[8..12].copy_from_slice(&self.generation.to_be_bytes());
        b[12..16].copy_from_slice(&self.serial.to_be_bytes());
        b
    }

    /// Decodes a datagram.
    pub fn decode(b: &[u8]) -> Result<Heartbeat, HeartbeatError> {
        if b.len() != HB_LEN {
            return Err(HeartbeatError::Length(b.len()));
        }
        if &b[..4] != HB_MAGIC || b[4] != 1 {
            return Err(HeartbeatError::Magic);
        }
        if b[5] != 1 {
            return Err(HeartbeatError::Field { field: "kind", value: b[5] });
        }
        let active = match b[6] {
            0 => false,
            1 => true,
            v => return Err(HeartbeatError::Field { field: "state", value: v }),
        };
        let role = match b[7] {
            0 => Role::Primary,
            1 => Role::Backup,
            v => return Err(HeartbeatError::Field { field: "role", value: v }),
        };
        let generation = u32::from_be_bytes([b[8], b[9], b[10], b[11]]);
        let serial = u32::from_be_bytes([b[12], b[13], b[14], b[15]]);
        Ok(Heartbeat { active, role, generation, serial })
    }
}

/// What the driver must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PulseAction {
    /// Send this heartbeat to the peer.
    Send(Heartbeat),
    /// Bring up the VIPs, announce them, start the director.
    Activate,
    /// Stop the director, take the VIPs down.
    Deactivate,
}

/// The failover state machine of one director.
#[derive(Debug, Clone)]
pub struct Pulse {
    role: Role,
    active: bool,
    generation: u32,
    serial: u32,
    keepalive_ms: Millis,
    deadtime_ms: Millis,
    started_ms: Millis,
    last_heard_ms: Option<Millis>,
    next_send_ms: Millis,
}

impl Pulse {
    /// A director starting in standby at `now_ms`.
    pub fn new(role: Role, keepalive_ms: Millis, deadtime_ms: Millis, serial: u32, now_ms: Millis) -> Pulse {
        Pulse {
            role,
            active: false,
            generation: 0,
            serial,
            keepalive_ms,
            deadtime_ms,
            started_ms: now_ms,
            last_heard_ms: None,
            next_send_ms: now_ms,
        }
    }

    /// Whether this director runs the service.
    pub fn is_active(&self) -> bool {
        self.active
    }

    /// Current generation.
    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// The heartbeat interval.
    pub fn keepalive_ms(&self) -> Millis {
        self.keepalive_ms
    }

    /// New `keepalive` and `deadtime` (a reloaded lvs.cf); the next heartbeat is due no
    /// later than one new keepalive from the last one sent.
    pub fn set_timing(&mut self, keepalive_ms: Millis, deadtime_ms: Millis) {
        self.next_send_ms = self.next_send_ms.saturating_sub(self.keepalive_ms).saturating_add(keepalive_ms);
        self.keepalive_ms = keepalive_ms;
        self.deadtime_ms = deadtime_ms;
    }

    /// New `serial_no` of the lvs.cf, sent in the following heartbeats.
    pub fn set_serial(&mut self, serial: u32) {
        self.serial = serial;
    }

    fn heartbeat(&self) -> Heartbeat {
        Heartbeat { active: self.active, role: self.role, generation: self.generation, serial: self.serial }
    }

    fn activate(&mut self, out: &mut Vec<PulseAction>, now_ms: Millis) {
        self.active = true;
        self.generation = self.generation.saturating_add(1);
        out.push(PulseAction::Activate);
        // Tell the peer at once.
        out.push(PulseAction::Send(self.heartbeat()));
        self.next_send_ms = now_ms + self.keepalive_ms;
    }

    /// Take over now (the operator said so).
    pub fn takeover(&mut self, now_ms: Millis) -> Vec<PulseAction> {
        let mut out = Vec::new();
        if !self.active {
            self.activate(&mut out, now_ms);
        } else {
            self.generation = self.generation.saturating_add(1);
            out.push(PulseAction::Send(self.heartbeat()));
        }
        out
    }

    /// Time passes: heartbeats due, dead peer detection.
    pub fn tick(&mut self, now_ms: Millis) -> Vec<PulseAction> {
        let mut out = Vec::new();
        if !self.active {
            let silent_since = self.last_heard_ms.unwrap_or(self.started_ms);
            if now_ms.saturating_sub(silent_since) >= self.deadtime_ms {
                info!(silent_ms = now_ms - silent_since, "no heartbeat from the peer: taking over");
                self.activate(&mut out, now_ms);
            }
        }
        if now_ms >= self.next_send_ms {
            out.push(PulseAction::Send(self.heartbeat()));
            self.next_send_ms = now_ms + self.keepalive_ms;
        }
        out
    }

    /// A heartbeat from the peer arrived.
    pub fn on_heartbeat(&mut self, hb: &Heartbeat, now_ms: Millis) -> Vec<PulseAction> {
        let mut out = Vec::new();
        self.last_heard_ms = Some(now_ms);
        match (self.active, hb.active) {
            (true, true) => {
                let peer_wins = hb.generation > self.generation
                    || (hb.generation == self.generation && hb.role == Role::Primary && self.role == Role::Backup);
                if peer_wins {
                    warn!(peer_generation = hb.generation, generation = self.generation, "split brain: stepping down");
                    self.active = false;
                    self.generation = hb.generation;
                    out.push(PulseAction::Deactivate);
                    out.push(PulseAction::Send(self.heartbeat()));
                } else {
                    warn!(peer_generation = hb.generation, generation = self.generation, "split brain: staying active");
                    // Make sure the peer hears us now.
                    out.push(PulseAction::Send(self.heartbeat()));
                }
            }
            (false, true) => {
                self.generation = self.generation.max(hb.generation);
            }
            (false, false) => {
                self.generation = self.generation.max(hb.generation);
                if self.role == Role::Primary && hb.role == Role::Backup {
                    info!("both directors standing by: the primary takes over");
                    self.activate(&mut out, now_ms);
                }
            }
            (true, false) => {}
        }
        out
    }
}

/// The addresses pulse manages: `(vip, device)` of every active virtual with a device.
pub fn vips(cfg: &LvsConfig) -> Vec<(IpAddr, String)> {
    let mut v: Vec<(IpAddr, String)> =
        cfg.virtuals.iter().filter(|v| v.active).filter_map(|v| v.device.clone().map(|d| (v.address, d))).collect();
    v.sort();
    v.dedup();
    v
}

/// Options of the driver.
#[derive(Debug, Clone)]
pub struct PulseOptions {
    /// The lvs.cf.
    pub config: PathBuf,
    /// Role override (default: whichever of primary/backup is a local address).
    pub role: Option<Role>,
    /// The lvsd binary.
    pub lvsd: PathBuf,
    /// lvsd's control socket.
    pub socket: PathBuf,
    /// Take over at start (`--takeover`).
    pub takeover: bool,
}

/// Errors of the driver.
#[derive(Debug, thiserror::Error)]
pub enum PulseError {
    /// Configuration problem.
    #[error("{0}")]
    Config(String),
    /// Socket problem.
    #[error("heartbeat socket {addr}: {source}")]
    Socket {
        /// Address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

fn device_of(label: &str) -> &str {
    label.split(':').next().unwrap_or(label)
}

async fn sh(cmd: &str, args: &[&str]) -> bool {
    match tokio::process::Command::new(cmd).args(args).stdin(Stdio::null()).stdout(Stdio::null()).status().await {
        Ok(s) if s.success() => true,
        Ok(s) => {
            warn!(cmd, ?args, status = %s, "command failed");
            false
        }
        Err(e) => {
            warn!(cmd, ?args, error = %e, "cannot run command");
            false
        }
    }
}

async fn vips_up(vips: &[(IpAddr, String)]) {
    for (ip, label) in vips {
        let dev = device_of(label);
        let prefix = if ip.is_ipv4() { 32 } else { 128 };
        let addr = format!("{ip}/{prefix}");
        let mut args = vec!["addr", "replace", addr.as_str(), "dev", dev];
        if label.contains(':') && ip.is_ipv4() {
            args.extend(["label", label.as_str()]);
        }
        sh("ip", &args).await;
    }
    // Gratuitous ARP, so that neighbours move the VIP's MAC to us at once. arping waits for
    // replies that never come to an unsolicited ARP: run it in the background.
    for (ip, label) in vips.iter().filter(|(ip, _)| ip.is_ipv4()) {
        let ip = ip.to_string();
        let dev = device_of(label).to_string();
        let child = tokio::process::Command::new("arping")
            .args(["-q", "-U", "-c", "1", "-w", "1", "-i", &dev, "-S", &ip, &ip])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        match child {
            Ok(mut c) => {
                tokio::spawn(async move {
                    let _ = c.wait().await;
                });
            }
            Err(e) => warn!(error = %e, "cannot run arping: neighbours keep the old MAC until their cache expires"),
        }
    }
}

async fn vips_down(vips: &[(IpAddr, String)]) {
    for (ip, label) in vips {
        let prefix = if ip.is_ipv4() { 32 } else { 128 };
        sh("ip", &["addr", "del", &format!("{ip}/{prefix}"), "dev", device_of(label)]).await;
    }
}

/// Stops lvsd: SIGTERM (it stops listening, removes its socket and its nftables table),
/// SIGKILL after 2 s.
async fn stop_director(c: &mut tokio::process::Child) {
    if let Some(pid) = c.id() {
        sh("kill", &["-TERM", &pid.to_string()]).await;
        if tokio::time::timeout(Duration::from_secs(2), c.wait()).await.is_ok() {
            return;
        }
    }
    let _ = c.kill().await;
}

fn local_role(cfg: &LvsConfig, port: u16) -> Option<(Role, SocketAddr)> {
    for (role, addr) in [(Role::Primary, cfg.primary), (Role::Backup, cfg.backup)] {
        if let Some(ip) = addr {
            let a = SocketAddr::new(ip, port);
            if std::net::UdpSocket::bind(a).is_ok() {
                return Some((role, a));
            }
        }
    }
    None
}

/// How long pulse waits for the lvsd it started to print its ready line before it says so.
const LVSD_READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Starts lvsd as pulse's child (pulse stops it when it steps down) and watches for its
/// ready line (`lvsd: ready ...`, printed through `daemon::ready`) without holding up the
/// heartbeats: lvsd binds with IP_FREEBIND, so the VIPs can come up meanwhile. Its stderr
/// (its log) is relayed to pulse's.
fn start_director(opts: &PulseOptions) -> Option<tokio::process::Child> {
    use tokio::io::AsyncBufReadExt;
    let child = tokio::process::Command::new(&opts.lvsd)
        .arg("--config")
        .arg(&opts.config)
        .arg("--socket")
        .arg(&opts.socket)
        .arg("--foreground")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            warn!(lvsd = %opts.lvsd.display(), error = %e, "cannot start the director");
            return None;
        }
    };
    if let Some(err) = child.stderr.take() {
        // lvsd's log lines go through pulse's own stderr, so they follow pulse's log file
        // when SIGHUP reopens it after a rotation.
        tokio::spawn(async move {
            use std::io::Write;
            let mut lines = tokio::io::BufReader::new(err).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let _ = writeln!(std::io::stderr().lock(), "{line}");
            }
        });
    }
    if let Some(out) = child.stdout.take() {
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(out).lines();
            match tokio::time::timeout(LVSD_READY_TIMEOUT, lines.next_line()).await {
                Ok(Ok(Some(line))) => info!(line = %line, "the director is ready"),
                Ok(_) => warn!("lvsd stopped before it was ready; its message is above in this log"),
                Err(_) => warn!(timeout_s = LVSD_READY_TIMEOUT.as_secs(), "lvsd is not ready yet; still waiting"),
            }
            // Whatever else it prints is dropped (it prints nothing more by design).
            while let Ok(Some(_)) = lines.next_line().await {}
        });
    }
    Some(child)
}

/// Passes a reload on to the running lvsd (a `reload` request on its control socket: it
/// rereads the same lvs.cf and applies the difference), logging what it did.
fn reload_director(socket: PathBuf) {
    use crate::control::{ReloadReply, Request};
    tokio::spawn(async move {
        let r = tokio::task::spawn_blocking(move || crate::control::call::<ReloadReply>(&socket, &Request::Reload {}))
            .await;
        match r {
            Ok(Ok(r)) => {
                for c in &r.changes {
                    info!(change = %c, "lvsd reload");
                }
                for w in &r.warnings {
                    warn!(problem = %w, "lvsd reload: not applied");
                }
                info!(changes = r.changes.len(), warnings = r.warnings.len(), "lvsd reloaded the configuration");
            }
            Ok(Err(e)) => warn!(error = %e, "lvsd did not reload; it runs on its previous configuration"),
            Err(e) => warn!(error = %e, "lvsd reload request failed"),
        }
    });
}

/// What pulse itself takes from a reread lvs.cf: `keepalive`, `deadtime`, `serial_no` and
/// the VIPs at once; `primary`, `backup` and `heartbeat_port` need a restart of pulse
/// (warned, the running values stay).
async fn apply_config(new: LvsConfig, cfg: &mut LvsConfig, machine: &mut Pulse, vips: &mut Vec<(IpAddr, String)>) {
    let restart: Vec<String> = [
        ("primary", format!("{:?}", cfg.primary), format!("{:?}", new.primary)),
        ("backup", format!("{:?}", cfg.backup), format!("{:?}", new.backup)),
        ("heartbeat_port", cfg.heartbeat_port.to_string(), new.heartbeat_port.to_string()),
    ]
    .into_iter()
    .filter(|(_, a, b)| a != b)
    .map(|(k, a, b)| format!("{k} {a} -> {b}"))
    .collect();
    if !restart.is_empty() {
        warn!(changed = %restart.join(", "), "reload: these take effect when pulse is restarted; running on the old values");
    }
    if (cfg.keepalive_ms, cfg.deadtime_ms) != (new.keepalive_ms, new.deadtime_ms) {
        info!(keepalive_ms = new.keepalive_ms, deadtime_ms = new.deadtime_ms, "reload: new heartbeat timing");
        machine.set_timing(new.keepalive_ms, new.deadtime_ms);
    }
    if cfg.serial_no != new.serial_no {
        info!(serial_no = new.serial_no, "reload: new serial_no");
        machine.set_serial(new.serial_no as u32);
    }
    let new_vips = self::vips(&new);
    if new_vips != *vips {
        let gone: Vec<_> = vips.iter().filter(|v| !new_vips.contains(v)).cloned().collect();
        let added: Vec<_> = new_vips.iter().filter(|v| !vips.contains(v)).cloned().collect();
        info!(added = ?added, removed = ?gone, "reload: virtual addresses changed");
        if machine.is_active() {
            vips_down(&gone).await;
            vips_up(&added).await;
        }
        *vips = new_vips;
    }
    let (primary, backup, port) = (cfg.primary, cfg.backup, cfg.heartbeat_port);
    *cfg = new;
    // What needs a restart keeps running on the old values.
    (cfg.primary, cfg.backup, cfg.heartbeat_port) = (primary, backup, port);
}

/// Runs pulse until a stop is requested through `signals`: SIGUSR1 takes over, SIGHUP
/// rereads the lvs.cf (and passes the reload on to lvsd). Prints the ready line
/// (`pulse: ready role=...`) once the heartbeat socket is open.
pub async fn run(opts: PulseOptions, signals: daemon::Signals) -> Result<(), PulseError> {
    let mut cfg = LvsConfig::load(&opts.config).map_err(PulseError::Config)?;
    let (Some(primary), Some(backup)) = (cfg.primary, cfg.backup) else {
        return Err(PulseError::Config(format!("{}: pulse needs primary and backup", opts.config.display())));
    };
    let port = cfg.heartbeat_port;
    let (role, me) = match opts.role {
        Some(Role::Primary) => (Role::Primary, SocketAddr::new(primary, port)),
        Some(Role::Backup) => (Role::Backup, SocketAddr::new(backup, port)),
        None => local_role(&cfg, port).ok_or_else(|| {
            PulseError::Config(format!(
                "neither primary {primary} nor backup {backup} is an address of this host (or the port is busy)"
            ))
        })?,
    };
    let peer = SocketAddr::new(if role == Role::Primary { backup } else { primary }, port);
    let sock = tokio::net::UdpSocket::bind(me).await.map_err(|source| PulseError::Socket { addr: me, source })?;
    let mut vips = vips(&cfg);
    let start = tokio::time::Instant::now();
    let now = || start.elapsed().as_millis() as Millis;
    let mut machine = Pulse::new(role, cfg.keepalive_ms, cfg.deadtime_ms, cfg.serial_no as u32, now());
    let mut lvsd: Option<tokio::process::Child> = None;
    let mut sigs = signals.subscribe();
    let mut seen = *sigs.borrow_and_update();
    daemon::ready::ready(&format!("pulse: ready role={role:?}"));
    info!(?role, me = %me, peer = %peer, "pulse running");
    let mut pending = if opts.takeover { machine.takeover(now()) } else { Vec::new() };
    let mut buf = [0u8; 64];
    let mut last_warn: Option<tokio::time::Instant> = None;
    let mut warned_serial = false;
    loop {
        for action in pending.drain(..) {
            match action {
                PulseAction::Send(hb) => {
                    let _ = sock.send_to(&hb.encode(), peer).await;
                }
                PulseAction::Activate => {
                    info!(generation = machine.generation(), "becoming the active director");
                    // lvsd binds with IP_FREEBIND: start it first, then bring the VIPs up.
                    lvsd = start_director(&opts);
                    vips_up(&vips).await;
                }
                PulseAction::Deactivate => {
                    info!("becoming standby");
                    if let Some(mut c) = lvsd.take() {
                        stop_director(&mut c).await;
                    }
                    vips_down(&vips).await;
                }
            }
        }
        if seen.stop > 0 {
            break;
        }
        let tick = Duration::from_millis((machine.keepalive_ms() / 4).clamp(10, 1000));
        tokio::select! {
            changed = sigs.changed() => {
                if changed.is_err() {
                    break;
                }
                let c = *sigs.borrow_and_update();
                if c.user1 > seen.user1 {
                    info!("SIGUSR1: taking over");
                    pending = machine.takeover(now());
                }
                if c.reload > seen.reload {
                    daemon::ready::reloading();
                    match LvsConfig::load(&opts.config) {
                        Ok(new) if new.primary.is_none() || new.backup.is_none() => warn!(
                            config = %opts.config.display(),
                            "reload: pulse needs primary and backup; still running on the previous configuration"
                        ),
                        Ok(new) => {
                            apply_config(new, &mut cfg, &mut machine, &mut vips).await;
                            if lvsd.is_some() {
                                reload_director(opts.socket.clone());
                            }
                            info!(config = %opts.config.display(), "configuration reloaded");
                        }
                        Err(e) => warn!(error = %e, "reload: invalid configuration; still running on the previous one"),
                    }
                    daemon::ready::reloaded();
                }
                seen = c;
            }
            _ = tokio::time::sleep(tick) => pending = machine.tick(now()),
            r = sock.recv_from(&mut buf) => {
                if let Ok((n, from)) = r {
                    if from.ip() != peer.ip() {
                        continue;
                    }
                    match Heartbeat::decode(&buf[..n]) {
                        Ok(hb) => {
                            if hb.serial != machine.serial && !warned_serial {
                                warn!(peer_serial = hb.serial, serial = machine.serial, "the peer runs another lvs.cf serial_no");
                                warned_serial = true;
                            }
                            pending = machine.on_heartbeat(&hb, now());
                        }
                        Err(e) => {
                            // A remote peer can send anything: one line per 10 s at most.
                            if last_warn.is_none_or(|t: tokio::time::Instant| t.elapsed() >= Duration::from_secs(10)) {
                                warn!(from = %from, error = %e, "ignoring datagram (further ones muted for 10 s)");
                                last_warn = Some(tokio::time::Instant::now());
                            }
                        }
                    }
                }
            }
        }
    }
    daemon::ready::stopping();
    if let Some(mut c) = lvsd.take() {
        stop_director(&mut c).await;
        vips_down(&vips).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sends(a: &[PulseAction]) -> usize {
        a.iter().filter(|x| matches!(x, PulseAction::Send(_))).count()
    }

    #[test]
    fn alone_takes_over_after_deadtime() {
        let mut p = Pulse::new(Role::Backup, 100, 300, 1, 0);
        assert_eq!(sends(&p.tick(0)), 1);
        assert!(!p.tick(299).contains(&PulseAction::Activate));
        assert!(p.tick(300).contains(&PulseAction::Activate));
        assert!(p.is_active());
        assert_eq!(p.generation(), 1);
    }

    #[test]
    fn pair_start_primary_wins_and_backup_takes_over_on_silence() {
        let mut a = Pulse::new(Role::Primary, 100, 300, 1, 0);
        let mut b = Pulse::new(Role::Backup, 100, 300, 1, 0);
        let hb_b = b.heartbeat();
        assert!(a.on_heartbeat(&hb_b, 10).contains(&PulseAction::Activate));
        let hb_a = a.heartbeat();
        assert!(b.on_heartbeat(&hb_a, 11).is_empty());
        // The backup keeps hearing the primary: no takeover.
        for t in (100..1000).step_by(100) {
            b.on_heartbeat(&a.heartbeat(), t);
            assert!(!b.tick(t + 1).contains(&PulseAction::Activate));
        }
        // The primary dies: after deadtime of silence the backup takes over.
        assert!(!b.tick(1199).contains(&PulseAction::Activate));
        assert!(b.tick(1200).contains(&PulseAction::Activate));
        assert_eq!(b.generation(), 2);
        // The old primary returns, hears an active backup: stays standby.
        let mut a2 = Pulse::new(Role::Primary, 100, 300, 1, 2000);
        assert!(a2.on_heartbeat(&b.heartbeat(), 2001).is_empty());
        assert!(!a2.tick(2100).contains(&PulseAction::Activate));
        assert!(!a2.is_active());
        // Told to take over: higher generation, the backup steps down.
        assert!(a2.takeover(2200).contains(&PulseAction::Activate));
        assert!(b.on_heartbeat(&a2.heartbeat(), 2201).contains(&PulseAction::Deactivate));
        assert!(!b.is_active());
    }

    #[test]
    fn split_brain_is_resolved_the_same_way_on_both_sides() {
        for (ga, gb) in [(1, 1), (1, 2), (3, 2), (5, 5)] {
            let mut a = Pulse::new(Role::Primary, 100, 300, 1, 0);
            let mut b = Pulse::new(Role::Backup, 100, 300, 1, 0);
            a.active = true;
            a.generation = ga;
            b.active = true;
            b.generation = gb;
            let (ha, hb) = (a.heartbeat(), b.heartbeat());
            let a_down = a.on_heartbeat(&hb, 1).contains(&PulseAction::Deactivate);
            let b_down = b.on_heartbeat(&ha, 1).contains(&PulseAction::Deactivate);
            assert!(a_down ^ b_down, "exactly one steps down for generations {ga},{gb}");
            assert_eq!(a_down, gb > ga);
        }
    }

    #[test]
    fn a_peer_at_the_last_generation_does_not_overflow() {
        // Found by the fuzzer: a heartbeat carrying u32::MAX, then a takeover.
        let mut p = Pulse::new(Role::Backup, 100, 300, 1, 0);
        let hb = Heartbeat { active: false, role: Role::Backup, generation: u32::MAX, serial: 1 };
        assert!(p.on_heartbeat(&hb, 1).is_empty());
        assert!(p.tick(1000).contains(&PulseAction::Activate));
        assert_eq!(p.generation(), u32::MAX);
        let _ = p.takeover(1001);
        let peer = Heartbeat { active: true, role: Role::Primary, generation: u32::MAX, serial: 1 };
        // Equal generations: the primary stays, we step down.
        assert!(p.on_heartbeat(&peer, 1002).contains(&PulseAction::Deactivate));
    }

    proptest! {
        #[test]
        fn prop_heartbeat_round_trip(active in any::<bool>(), backup in any::<bool>(), g in any::<u32>(), s in any::<u32>()) {
            let hb = Heartbeat { active, role: if backup { Role::Backup } else { Role::Primary }, generation: g, serial: s };
            prop_assert_eq!(Heartbeat::decode(&hb.encode()), Ok(hb));
        }

        #[test]
        fn prop_decode_never_panics(b in prop::collection::vec(any::<u8>(), 0..40)) {
            let _ = Heartbeat::decode(&b);
        }
    }
}
