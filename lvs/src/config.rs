//! Piranha's `lvs.cf`: global keys, `virtual NAME { ... }` blocks holding `server NAME { ... }`
//! blocks (and `failover` blocks, which are read and ignored). Every error names its line.
//!
//! ```text
//! serial_no = 12
//! primary = 198.18.0.1
//! backup = 198.18.0.2
//! backup_active = 1
//! heartbeat_port = 539
//! keepalive = 2
//! deadtime = 6
//! network = nat
//! virtual web {
//!     active = 1
//!     address = 198.18.1.100 eth0:1
//!     port = 80
//!     protocol = tcp
//!     scheduler = wlc
//!     persistent = 300
//!     pmask = 255.255.255.0
//!     send = "GET / HTTP/1.0\r\n\r\n"
//!     expect = "HTTP"
//!     timeout = 6
//!     reentry = 15
//!     quiesce_server = 0
//!     server web1 {
//!         address = 198.18.2.1
//!         active = 1
//!         weight = 1
//!     }
//! }
//! ```
//!
//! Extensions (not in Piranha): durations may have decimals (`keepalive = 0.5`); a virtual
//! may set `check_interval` (default: the global `keepalive`), `expect_status` (HTTP status
//! code to expect instead of a string), `weight_program` (its exit code sets the weight, see
//! [`crate::nanny`]) and `fwmark_ports` (more ports carrying the service's mark); a server may
//! set `port`, `u_threshold` and `l_threshold`.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;

use crate::model::{Forward, Protocol, SchedFlags, SchedKind, ServiceKey};
use crate::table::{DestSpec, Director, NetMask, ServiceSpec, TableError};

/// An error in an `lvs.cf`, with its line number (1-based).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct ConfigError {
    /// Line of the offending statement (for a block-level problem, the block's first line).
    pub line: usize,
    /// What is wrong and what to write instead.
    pub message: String,
}

fn err<T>(line: usize, message: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError { line, message: message.into() })
}

/// Keys of Piranha's lvs.cf that this director reads but has no use for.
const IGNORED_GLOBAL: &[&str] = &[
    "service",
    "heartbeat",
    "rsh_command",
    "nat_router",
    "nat_nmask",
    "debug_level",
    "monitor_links",
    "syncdaemon",
    "syncd_iface",
    "syncd_id",
    "tcp_timeout",
    "tcpfin_timeout",
    "udp_timeout",
    "hard_shutdown",
    "primary_private",
    "backup_private",
];
const IGNORED_VIRTUAL: &[&str] = &["vip_nmask", "load_monitor", "hash_table_size", "sorry_server"];

/// Forwarding method of the cluster (`network = nat|direct|tunnel`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Network {
    /// NAT (what the userspace proxy does).
    #[default]
    Nat,
    /// Direct routing.
    Direct,
    /// Tunnelling.
    Tunnel,
}

/// One `server` block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RealServerConf {
    /// Block name.
    pub name: String,
    /// Line of `server NAME {`.
    pub line: usize,
    /// `address`.
    pub address: IpAddr,
    /// `port` (extension; default: the virtual's port, or 0 = the client's for fwmark).
    pub port: Option<u16>,
    /// `weight` (default 1).
    pub weight: i32,
    /// `active` (default 1): an inactive server is not added.
    pub active: bool,
    /// `u_threshold` (extension).
    pub u_threshold: u32,
    /// `l_threshold` (extension).
    pub l_threshold: u32,
}

/// One `virtual` block.
#[derive(Debug, Clone, PartialEq)]
pub struct VirtualConf {
    /// Block name.
    pub name: String,
    /// Line of `virtual NAME {`.
    pub line: usize,
    /// `active` (default 1).
    pub active: bool,
    /// `address`: the VIP.
    pub address: IpAddr,
    /// The interface after the address (`eth0:1`), where pulse brings the VIP up.
    pub device: Option<String>,
    /// `port` (required unless `fwmark`).
    pub port: u16,
    /// `protocol` (default tcp).
    pub protocol: Protocol,
    /// `scheduler` (default wlc).
    pub scheduler: SchedKind,
    /// `persistent` seconds.
    pub persistent_s: Option<u32>,
    /// `pmask`.
    pub pmask: Option<Ipv4Addr>,
    /// `fwmark`.
    pub fwmark: Option<u32>,
    /// `fwmark_ports` (extension).
    pub fwmark_ports: Vec<u16>,
    /// `send`, escapes already decoded.
    pub send: Option<Vec<u8>>,
    /// `expect`, escapes already decoded.
    pub expect: Option<Vec<u8>>,
    /// `use_regex`: `expect` is a regular expression.
    pub use_regex: bool,
    /// `send_program`, with `%h` still in it.
    pub send_program: Option<String>,
    /// `expect_status` (extension): HTTP status code.
    pub expect_status: Option<u16>,
    /// `weight_program` (extension).
    pub weight_program: Option<String>,
    /// `timeout`: a check that takes longer fails (ms).
    pub timeout_ms: u64,
    /// `reentry`: successes needed before a failed server returns, as time (ms).
    pub reentry_ms: u64,
    /// `check_interval` (extension, ms); default: global keepalive.
    pub check_interval_ms: u64,
    /// `quiesce_server`: on failure set weight 0 instead of removing.
    pub quiesce_server: bool,
    /// The servers.
    pub servers: Vec<RealServerConf>,
}

impl VirtualConf {
    /// The IPVS service key.
    pub fn key(&self) -> ServiceKey {
        match self.fwmark {
            Some(m) => ServiceKey::FwMark(m),
            None => ServiceKey::Addr { proto: self.protocol, addr: SocketAddr::new(self.address, self.port) },
        }
    }

    /// Address health checks connect to for `server`.
    pub fn check_addr(&self, server: &RealServerConf) -> SocketAddr {
        SocketAddr::new(server.address, server.port.filter(|p| *p != 0).unwrap_or(self.port))
    }

    /// The real-server address as the table holds it.
    pub fn dest_addr(&self, server: &RealServerConf) -> SocketAddr {
        let port = match (server.port, self.fwmark) {
            (Some(p), _) => p,
            (None, Some(_)) => 0,
            (None, None) => self.port,
        };
        SocketAddr::new(server.address, port)
    }
}

/// A whole `lvs.cf`.
#[derive(Debug, Clone, PartialEq)]
pub struct LvsConfig {
    /// `serial_no`.
    pub serial_no: u64,
    /// `primary`: the primary director's address.
    pub primary: Option<IpAddr>,
    /// `backup`: the backup director's address.
    pub backup: Option<IpAddr>,
    /// `backup_active`: a backup is configured.
    pub backup_active: bool,
    /// `heartbeat_port` (default 539).
    pub heartbeat_port: u16,
    /// `keepalive` in ms (default 6 s).
    pub keepalive_ms: u64,
    /// `deadtime` in ms (default 18 s).
    pub deadtime_ms: u64,
    /// `network`.
    pub network: Network,
    /// The virtual servers.
    pub virtuals: Vec<VirtualConf>,
}

/// Decodes `\n`, `\r`, `\t`, `\\`, `\"` and `\xHH` in a send/expect string.
pub fn unescape(s: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' {
            out.push(b[i]);
            i += 1;
            continue;
        }
        let Some(&c) = b.get(i + 1) else { return Err("a lone backslash ends the string".into()) };
        i += 2;
        out.push(match c {
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'\\' => b'\\',
            b'"' => b'"',
            b'0' => 0,
            b'x' => {
                let hex = s.get(i..i + 2).ok_or("\\x needs two hex digits")?;
                i += 2;
                u8::from_str_radix(hex, 16).map_err(|_| format!("\\x{hex} is not a hex byte"))?
            }
            other => return Err(format!("unknown escape \\{}", other as char)),
        });
    }
    Ok(out)
}

/// Strips one pair of double quotes (`"GET /"`), keeping escapes for [`unescape`].
fn unquote(v: &str, line: usize) -> Result<&str, ConfigError> {
    if let Some(rest) = v.strip_prefix('"') {
        // the closing quote is the last character; inner \" are escapes
        match rest.strip_suffix('"') {
            Some(inner) if !inner.ends_with('\\') || inner.ends_with("\\\\") => Ok(inner),
            _ => err(line, format!("unterminated quoted string {v}")),
        }
    } else {
        Ok(v)
    }
}

fn parse_bool(v: &str, key: &str, line: usize) -> Result<bool, ConfigError> {
    match v {
        "1" | "yes" | "true" | "on" => Ok(true),
        "0" | "no" | "false" | "off" => Ok(false),
        _ => err(line, format!("{key} must be 0 or 1, not `{v}`")),
    }
}

fn parse_num<T: std::str::FromStr>(v: &str, key: &str, line: usize) -> Result<T, ConfigError> {
    v.parse().or_else(|_| err(line, format!("{key} must be a number in range, not `{v}`")))
}

/// Seconds with optional decimals → ms (max one day).
fn parse_secs(v: &str, key: &str, line: usize) -> Result<u64, ConfigError> {
    let f: f64 = v.parse().or_else(|_| err(line, format!("{key} must be a number of seconds, not `{v}`")))?;
    if !(f > 0.0 && f <= 86400.0) {
        return err(line, format!("{key} must be above 0 and at most 86400 seconds, not `{v}`"));
    }
    Ok((f * 1000.0).round().max(1.0) as u64)
}

fn parse_ip(v: &str, key: &str, line: usize) -> Result<IpAddr, ConfigError> {
    v.parse().or_else(|_| err(line, format!("{key} must be an IP address, not `{v}`")))
}

fn parse_mask(v: &str, key: &str, line: usize) -> Result<Ipv4Addr, ConfigError> {
    let m: Ipv4Addr = v.parse().or_else(|_| err(line, format!("{key} must be a netmask like 255.255.255.0")))?;
    let bits = u32::from(m);
    if bits.leading_ones() + bits.trailing_zeros() != 32 {
        return err(line, format!("{key} {v} is not a contiguous netmask"));
    }
    Ok(m)
}

#[derive(Debug)]
enum Frame {
    Top,
    Virtual(Box<VirtualConf>, HashSet<&'static str>),
    Server(Box<VirtualConf>, HashSet<&'static str>, RealServerConf, HashSet<&'static str>),
    Failover(Option<Box<VirtualConf>>, HashSet<&'static str>, usize),
}

fn new_virtual(name: &str, line: usize) -> VirtualConf {
    VirtualConf {
        name: name.to_string(),
        line,
        active: true,
        address: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        device: None,
        port: 0,
        protocol: Protocol::Tcp,
        scheduler: SchedKind::Wlc,
        persistent_s: None,
        pmask: None,
        fwmark: None,
        fwmark_ports: Vec::new(),
        send: None,
        expect: None,
        use_regex: false,
        send_program: None,
        expect_status: None,
        weight_program: None,
        timeout_ms: 6000,
        reentry_ms: 15000,
        check_interval_ms: 0,
        quiesce_server: false,
        servers: Vec::new(),
    }
}

/// Interns a key name for duplicate detection.
fn intern(key: &str, known: &[&'static str]) -> Option<&'static str> {
    known.iter().copied().find(|k| *k == key)
}

const VIRTUAL_KEYS: &[&str] = &[
    "active",
    "address",
    "port",
    "protocol",
    "scheduler",
    "persistent",
    "pmask",
    "fwmark",
    "fwmark_ports",
    "send",
    "expect",
    "use_regex",
    "send_program",
    "expect_status",
    "weight_program",
    "timeout",
    "reentry",
    "check_interval",
    "quiesce_server",
];
const SERVER_KEYS: &[&str] = &["address", "port", "weight", "active", "u_threshold", "l_threshold"];
const GLOBAL_KEYS: &[&str] =
    &["serial_no", "primary", "backup", "backup_active", "heartbeat_port", "keepalive", "deadtime", "network"];

impl LvsConfig {
    /// Reads and parses a file; errors are `FILE:LINE: message`.
    pub fn load(path: &Path) -> Result<LvsConfig, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
        LvsConfig::parse(&text).map_err(|e| format!("{}:{}: {}", path.display(), e.line, e.message))
    }

    /// Parses and validates the text of an `lvs.cf`.
    pub fn parse(text: &str) -> Result<LvsConfig, ConfigError> {
        let mut cfg = LvsConfig {
            serial_no: 0,
            primary: None,
            backup: None,
            backup_active: false,
            heartbeat_port: 539,
            keepalive_ms: 6000,
            deadtime_ms: 18000,
            network: Network::Nat,
            virtuals: Vec::new(),
        };
        let mut stack = Frame::Top;
        let mut seen_global: HashSet<&'static str> = HashSet::new();
        let mut names = HashSet::new();
        for (idx, raw) in text.lines().enumerate() {
            let line = idx + 1;
            let stmt = strip_comment(raw).trim();
            if stmt.is_empty() {
                continue;
            }
            if stmt == "}" {
                stack = match stack {
                    Frame::Top => return err(line, "`}` without an open block"),
                    Frame::Virtual(v, _) => {
                        let v = finish_virtual(*v, &cfg)?;
                        cfg.virtuals.push(v);
                        Frame::Top
                    }
                    Frame::Server(v, vk, s, _) => {
                        let mut v = v;
                        if s.address.is_unspecified() {
                            return err(s.line, format!("server {} has no address", s.name));
                        }
                        if v.servers.iter().any(|o| o.address == s.address && o.port == s.port) {
                            return err(s.line, format!("server {} repeats address {}", s.name, s.address));
                        }
                        v.servers.push(s);
                        Frame::Virtual(v, vk)
                    }
                    Frame::Failover(Some(v), vk, _) => Frame::Virtual(v, vk),
                    Frame::Failover(None, _, _) => Frame::Top,
                };
                continue;
            }
            if let Some(head) = stmt.strip_suffix('{') {
                let mut words = head.split_whitespace();
                let kind = words.next().unwrap_or("");
                let name = words.next();
                if words.next().is_some() {
                    return err(line, format!("expected `{kind} NAME {{`"));
                }
                let Some(name) = name else {
                    return err(line, format!("a {kind} block needs a name: `{kind} NAME {{`"));
                };
                stack = match (kind, stack) {
                    ("virtual", Frame::Top) => {
                        if !names.insert(name.to_string()) {
                            return err(line, format!("virtual {name} is defined twice"));
                        }
                        Frame::Virtual(Box::new(new_virtual(name, line)), HashSet::new())
                    }
                    ("failover", Frame::Top) => Frame::Failover(None, HashSet::new(), line),
                    ("server", Frame::Virtual(v, vk)) => {
                        let s = RealServerConf {
                            name: name.to_string(),
                            line,
                            address: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                            port: None,
                            weight: 1,
                            active: true,
                            u_threshold: 0,
                            l_threshold: 0,
                        };
                        Frame::Server(v, vk, s, HashSet::new())
                    }
                    ("server", _) => return err(line, "a server block belongs inside a virtual block"),
                    ("virtual" | "failover", _) => return err(line, format!("{kind} blocks cannot be nested")),
                    _ => return err(line, format!("unknown block `{kind}` (expected virtual, server or failover)")),
                };
                continue;
            }
            let Some((key, value)) = stmt.split_once('=') else {
                return err(line, format!("expected `key = value`, found `{stmt}`"));
            };
            let key = key.trim();
            let value = value.trim();
            if value.is_empty() {
                return err(line, format!("{key} has no value"));
            }
            match &mut stack {
                Frame::Top => {
                    let Some(k) = intern(key, GLOBAL_KEYS) else {
                        if IGNORED_GLOBAL.contains(&key) {
                            continue;
                        }
                        return err(line, format!("unknown global key `{key}`"));
                    };
                    if !seen_global.insert(k) {
                        return err(line, format!("{key} is set twice"));
                    }
                    match k {
                        "serial_no" => cfg.serial_no = parse_num(value, key, line)?,
                        "primary" => cfg.primary = Some(parse_ip(value, key, line)?),
                        "backup" => cfg.backup = Some(parse_ip(value, key, line)?),
                        "backup_active" => cfg.backup_active = parse_bool(value, key, line)?,
                        "heartbeat_port" => cfg.heartbeat_port = parse_num(value, key, line)?,
                        "keepalive" => cfg.keepalive_ms = parse_secs(value, key, line)?,
                        "deadtime" => cfg.deadtime_ms = parse_secs(value, key, line)?,
                        "network" => {
                            cfg.network = match value {
                                "nat" => Network::Nat,
                                "direct" => Network::Direct,
                                "tunnel" => Network::Tunnel,
                                _ => return err(line, format!("network must be nat, direct or tunnel, not `{value}`")),
                            }
                        }
                        _ => unreachable!("every global key handled"),
                    }
                }
                Frame::Failover(..) => {}
                Frame::Virtual(v, seen) => virtual_key(v, seen, key, value, line)?,
                Frame::Server(_, _, s, seen) => {
                    let Some(k) = intern(key, SERVER_KEYS) else {
                        return err(line, format!("unknown server key `{key}`"));
                    };
                    if !seen.insert(k) {
                        return err(line, format!("{key} is set twice in server {}", s.name));
                    }
                    match k {
                        "address" => s.address = parse_ip(value.split_whitespace().next().unwrap_or(""), key, line)?,
                        "port" => s.port = Some(parse_num(value, key, line)?),
                        "weight" => {
                            let w: i32 = parse_num(value, key, line)?;
                            if !(0..=65535).contains(&w) {
                                return err(line, format!("weight must be 0..65535, not {w}"));
                            }
                            s.weight = w;
                        }
                        "active" => s.active = parse_bool(value, key, line)?,
                        "u_threshold" => s.u_threshold = parse_num(value, key, line)?,
                        "l_threshold" => s.l_threshold = parse_num(value, key, line)?,
                        _ => unreachable!("every server key handled"),
                    }
                }
            }
        }
        match stack {
            Frame::Top => {}
            Frame::Virtual(v, _) => return err(v.line, format!("virtual {} is not closed (missing `}}`)", v.name)),
            Frame::Server(_, _, s, _) => return err(s.line, format!("server {} is not closed (missing `}}`)", s.name)),
            Frame::Failover(_, _, l) => return err(l, "failover block is not closed (missing `}`)"),
        }
        if cfg.deadtime_ms <= cfg.keepalive_ms {
            return err(
                line_of(text, "deadtime").unwrap_or(1),
                format!("deadtime ({} ms) must be longer than keepalive ({} ms)", cfg.deadtime_ms, cfg.keepalive_ms),
            );
        }
        if let (Some(p), Some(b)) = (cfg.primary, cfg.backup) {
            if p == b {
                return err(line_of(text, "backup").unwrap_or(1), "primary and backup are the same address");
            }
        }
        let mut keys = HashSet::new();
        for v in &cfg.virtuals {
            if v.active && !keys.insert(v.key()) {
                return err(v.line, format!("virtual {} is the same service ({}) as an earlier one", v.name, v.key()));
            }
        }
        Ok(cfg)
    }

    /// Services, servers and marks into a table: active virtuals and active servers only.
    pub fn apply(&self, d: &mut Director) -> Result<(), TableError> {
        let fwd = match self.network {
            Network::Nat => Forward::Masq,
            Network::Direct => Forward::Route,
            Network::Tunnel => Forward::Tunnel,
        };
        for v in self.virtuals.iter().filter(|v| v.active) {
            let key = v.key();
            let mut spec = ServiceSpec::new(key);
            spec.sched = v.scheduler;
            spec.flags = SchedFlags::default();
            spec.persistent_s = v.persistent_s;
            if let Some(m) = v.pmask {
                spec.netmask = NetMask::V4(m);
            }
            d.add_service(spec)?;
            if let Some(mark) = v.fwmark {
                for port in std::iter::once(v.port).chain(v.fwmark_ports.iter().copied()).filter(|p| *p != 0) {
                    d.set_mark(v.protocol, SocketAddr::new(v.address, port), Some(mark));
                }
            }
            for s in v.servers.iter().filter(|s| s.active) {
                let mut ds = DestSpec::new(v.dest_addr(s));
                ds.weight = s.weight;
                ds.u_threshold = s.u_threshold;
                ds.l_threshold = s.l_threshold;
                ds.fwd = fwd;
                d.add_dest(&key, ds)?;
            }
        }
        Ok(())
    }
}

fn line_of(text: &str, key: &str) -> Option<usize> {
    text.lines().position(|l| strip_comment(l).trim().split('=').next().map(str::trim) == Some(key)).map(|i| i + 1)
}

/// Removes a `#` comment that is not inside double quotes.
fn strip_comment(line: &str) -> &str {
    let mut in_quotes = false;
    let mut escaped = false;
    for (i, c) in line.char_indices() {
        match c {
            '\\' if in_quotes && !escaped => {
                escaped = true;
                continue;
            }
            '"' if !escaped => in_quotes = !in_quotes,
            '#' if !in_quotes => return &line[..i],
            _ => {}
        }
        escaped = false;
    }
    line
}

fn virtual_key(
    v: &mut VirtualConf,
    seen: &mut HashSet<&'static str>,
    key: &str,
    value: &str,
    line: usize,
) -> Result<(), ConfigError> {
    let Some(k) = intern(key, VIRTUAL_KEYS) else {
        if IGNORED_VIRTUAL.contains(&key) {
            return Ok(());
        }
        return err(line, format!("unknown virtual key `{key}`"));
    };
    if !seen.insert(k) {
        return err(line, format!("{key} is set twice in virtual {}", v.name));
    }
    match k {
        "active" => v.active = parse_bool(value, key, line)?,
        "address" => {
            let mut w = value.split_whitespace();
            v.address = parse_ip(w.next().unwrap_or(""), key, line)?;
            v.device = w.next().map(str::to_string);
            if w.next().is_some() {
                return err(line, "address is `IP [DEVICE]`");
            }
        }
        "port" => {
            v.port = parse_num(value, key, line)?;
        }
        "protocol" => {
            v.protocol = match value {
                "tcp" => Protocol::Tcp,
                "udp" => Protocol::Udp,
                _ => return err(line, format!("protocol must be tcp or udp, not `{value}`")),
            }
        }
        "scheduler" => v.scheduler = value.parse().map_err(|e| ConfigError { line, message: format!("{e}") })?,
        "persistent" => {
            let p: u32 = parse_num(value, key, line)?;
            v.persistent_s = (p > 0).then_some(p);
        }
        "pmask" => v.pmask = Some(parse_mask(value, key, line)?),
        "fwmark" => {
            let m: u32 = parse_num(value, key, line)?;
            if m == 0 {
                return err(line, "fwmark must be above 0");
            }
            v.fwmark = Some(m);
        }
        "fwmark_ports" => {
            for p in value.split(|c: char| c == ',' || c.is_whitespace()).filter(|s| !s.is_empty()) {
                v.fwmark_ports.push(parse_num(p, key, line)?);
            }
        }
        "send" => {
            let s = unquote(value, line)?;
            v.send = Some(unescape(s).map_err(|m| ConfigError { line, message: format!("send: {m}") })?);
        }
        "expect" => {
            let s = unquote(value, line)?;
            v.expect = Some(unescape(s).map_err(|m| ConfigError { line, message: format!("expect: {m}") })?);
        }
        "use_regex" => v.use_regex = parse_bool(value, key, line)?,
        "send_program" => v.send_program = Some(unquote(value, line)?.to_string()),
        "weight_program" => v.weight_program = Some(unquote(value, line)?.to_string()),
        "expect_status" => {
            let s: u16 = parse_num(value, key, line)?;
            if !(100..=599).contains(&s) {
                return err(line, format!("expect_status must be an HTTP status 100..599, not {s}"));
            }
            v.expect_status = Some(s);
        }
        "timeout" => v.timeout_ms = parse_secs(value, key, line)?,
        "reentry" => v.reentry_ms = parse_secs(value, key, line)?,
        "check_interval" => v.check_interval_ms = parse_secs(value, key, line)?,
        "quiesce_server" => v.quiesce_server = parse_bool(value, key, line)?,
        _ => unreachable!("every virtual key handled"),
    }
    Ok(())
}

fn finish_virtual(mut v: VirtualConf, cfg: &LvsConfig) -> Result<VirtualConf, ConfigError> {
    let l = v.line;
    let name = v.name.clone();
    if v.address.is_unspecified() {
        return err(l, format!("virtual {name} has no address"));
    }
    if v.port == 0 && v.fwmark.is_none() {
        return err(l, format!("virtual {name} has no port (set port, or fwmark for a mark service)"));
    }
    if v.pmask.is_some() && v.persistent_s.is_none() {
        return err(l, format!("virtual {name}: pmask needs persistent"));
    }
    if v.send_program.is_some() && (v.send.is_some() || v.expect_status.is_some()) {
        return err(l, format!("virtual {name}: send_program replaces send/expect_status; set only one"));
    }
    if v.weight_program.is_some() && (v.send_program.is_some() || v.send.is_some()) {
        return err(l, format!("virtual {name}: weight_program is a check of its own; drop send/send_program"));
    }
    if v.expect_status.is_some() && v.expect.is_some() {
        return err(l, format!("virtual {name}: expect and expect_status are exclusive"));
    }
    if v.use_regex {
        let Some(e) = &v.expect else { return err(l, format!("virtual {name}: use_regex without expect")) };
        let pat = String::from_utf8_lossy(e);
        if let Err(e) = regex::bytes::Regex::new(&pat) {
            return err(l, format!("virtual {name}: expect is not a valid regex: {e}"));
        }
    }
    if v.check_interval_ms == 0 {
        v.check_interval_ms = cfg.keepalive_ms;
    }
    if !v.fwmark_ports.is_empty() && v.fwmark.is_none() {
        return err(l, format!("virtual {name}: fwmark_ports needs fwmark"));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) const EXAMPLE: &str = include_str!("../examples/lvs.cf");

    #[test]
    fn example_parses_and_applies() {
        let c = LvsConfig::parse(EXAMPLE).unwrap();
        assert_eq!(c.serial_no, 42);
        assert_eq!(c.virtuals.len(), 3);
        let web = &c.virtuals[0];
        assert_eq!(web.send.as_deref(), Some(&b"GET / HTTP/1.0\r\n\r\n"[..]));
        assert_eq!(web.servers.len(), 3);
        assert_eq!(web.device.as_deref(), Some("eth0:1"));
        let mut d = Director::new();
        c.apply(&mut d).unwrap();
        assert_eq!(d.services().len(), 3);
        assert_eq!(d.marks().len(), 2);
    }

    fn e(text: &str) -> (usize, String) {
        let e = LvsConfig::parse(text).unwrap_err();
        (e.line, e.message)
    }

    #[test]
    fn errors_carry_lines() {
        assert_eq!(e("serial_no = 1\nbogus = 2\n").0, 2);
        assert_eq!(e("virtual a {\n address = 1.2.3.4\n port = 80\n scheduler = fastest\n}\n").0, 4);
        assert!(e("virtual a {\n address = 1.2.3.4\n port = 80\n scheduler = fastest\n}\n").1.contains("fastest"));
        assert_eq!(
            e("virtual a {\n address = 1.2.3.4\n}\n"),
            (1, "virtual a has no port (set port, or fwmark for a mark service)".into())
        );
        assert_eq!(e("virtual a {\n address = 1.2.3.4\n port = 80\n").0, 1);
        assert_eq!(e("}\n").0, 1);
        assert_eq!(e("virtual a {\n address = 1.2.3.4\n port = 80\n server s {\n weight = -1\n }\n}\n").0, 5);
        assert_eq!(e("virtual a {\n address = 1.2.3.4\n port = 80\n server s {\n weight = 1\n }\n}\n").0, 4);
        assert_eq!(e("keepalive = 6\ndeadtime = 2\n").0, 2);
        assert_eq!(e("virtual a {\n address = 1.2.3.4\n port = 99999\n}\n").0, 3);
        assert_eq!(e("virtual a {\n address = 1.2.3.4\n port = 1\n port = 2\n}\n").0, 4);
        assert_eq!(e("virtual a {\n address = 1.2.3.4\n port = 1\n send = \"x\\q\"\n}\n").0, 4);
        assert_eq!(e("server a {\n}\n").0, 1);
        assert_eq!(e("virtual a {\n virtual b {\n").0, 2);
        assert_eq!(e("virtual a {\n address = 1.2.3.4\n port = 1\n pmask = 255.0.255.0\n persistent = 1\n}\n").0, 4);
        assert_eq!(e("virtual a {\n address = 1.2.3.4\n port = 1\n expect = \"(\"\n use_regex = 1\n}\n").0, 1);
        assert_eq!(
            e("virtual a {\n address = 1.2.3.4\n port = 1\n}\nvirtual b {\n address = 1.2.3.4\n port = 1\n}\n").0,
            5
        );
    }

    #[test]
    fn unescape_forms() {
        assert_eq!(unescape(r#"a\r\n\t\\\x41\""#).unwrap(), b"a\r\n\t\\A\"");
        assert!(unescape("a\\").is_err());
        assert!(unescape("\\xZZ").is_err());
    }

    #[test]
    fn comments_and_quotes() {
        let c = LvsConfig::parse(
            "# top\nvirtual a { # block\n address = 1.2.3.4\n port = 80 # the port\n send = \"GET /#x \\\" #\"\n}\n",
        )
        .unwrap();
        assert_eq!(c.virtuals[0].send.as_deref(), Some(&b"GET /#x \" #"[..]));
    }

    proptest! {
        #[test]
        fn prop_never_panics(s in "\\PC{0,300}") {
            let _ = LvsConfig::parse(&s);
        }

        #[test]
        fn prop_lines_stay_in_range(lines in prop::collection::vec(
            prop::sample::select(vec!["virtual v {", "server s {", "}", "address = 1.2.3.4", "port = 80",
                "weight = 3", "scheduler = rr", "bogus = 1", "keepalive = 1", "deadtime = 3", "",
                "send = \"a\\r\\n\"", "fwmark = 5", "persistent = 10", "pmask = 255.255.0.0"]), 0..30)) {
            let text = lines.join("\n");
            if let Err(e) = LvsConfig::parse(&text) {
                prop_assert!(e.line >= 1 && e.line <= lines.len().max(1), "line {} of {}", e.line, lines.len());
            }
        }

        #[test]
        fn prop_generated_configs_round_trip_into_table(
            weights in prop::collection::vec(0i32..100, 1..5),
            sched in prop::sample::select(SchedKind::ALL.to_vec()),
            port in 1u16..65535,
        ) {
            let mut text = format!("virtual v {{\n address = 10.1.2.3\n port = {port}\n scheduler = {sched}\n");
            for (i, w) in weights.iter().enumerate() {
                text.push_str(&format!(" server s{i} {{\n  address = 10.2.0.{}\n  weight = {w}\n }}\n", i + 1));
            }
            text.push_str("}\n");
            let c = LvsConfig::parse(&text).unwrap();
            let mut d = Director::new();
            c.apply(&mut d).unwrap();
            let s = &d.services()[0];
            prop_assert_eq!(s.spec.sched, sched);
            let got: Vec<i32> = s.dests.iter().map(|d| d.weight).collect();
            prop_assert_eq!(got, weights);
        }
    }
}
