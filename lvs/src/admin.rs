//! ipvsadm's command language: argument parsing (getopt style: `-Ln`, `-t10.0.0.1:80`,
//! `--tcp-service=...`), execution against a [`Director`], `-L` listings and the
//! `ipvsadm-save` rule format read back by `-R`.

use std::fmt::Write as _;
use std::net::SocketAddr;

use crate::model::{parse_sockaddr, Forward, Protocol, SchedFlags, SchedKind, ServiceKey};
use crate::sched::Millis;
use crate::table::{DestSpec, Director, NetMask, ServiceSpec, Timeouts, DEFAULT_PERSISTENCE_S};

/// A command-line error (exit status 2).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ArgError(pub String);

fn bad<T>(m: impl Into<String>) -> Result<T, ArgError> {
    Err(ArgError(m.into()))
}

/// What `-L` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ListMode {
    /// Weights and connection counts.
    #[default]
    Plain,
    /// `--stats`.
    Stats,
    /// `--rate`.
    Rate,
    /// `--thresholds`.
    Thresholds,
    /// `-c`: connection entries.
    Conns,
    /// `--timeout`.
    Timeout,
    /// `--persistent-conn`.
    Persistent,
}

/// One parsed ipvsadm command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `-A`.
    AddService(ServiceSpec),
    /// `-E`.
    EditService(ServiceSpec),
    /// `-D`.
    DeleteService(ServiceKey),
    /// `-C`.
    Clear,
    /// `-a`.
    AddDest(ServiceKey, DestSpec),
    /// `-e`.
    EditDest(ServiceKey, DestSpec),
    /// `-d`.
    DeleteDest(ServiceKey, SocketAddr),
    /// `-L`/`-l`.
    List {
        /// One service, or all.
        key: Option<ServiceKey>,
        /// What to show.
        mode: ListMode,
        /// `--exact`.
        exact: bool,
    },
    /// `-Z`.
    Zero(Option<ServiceKey>),
    /// `-S`.
    Save,
    /// `-R`: rules on stdin.
    Restore,
    /// `--set tcp tcpfin udp`.
    SetTimeouts(Timeouts),
    /// Extension `--fwmark-map MARK -t|-u ADDR:PORT` (MARK 0 unmaps): connections to
    /// ADDR:PORT carry MARK, as an iptables mangle rule would mark them for IPVS.
    MapMark(Protocol, SocketAddr, Option<u32>),
    /// `-h`.
    Help,
    /// `-v`/`--version`.
    Version,
}

/// Result of running a command as lvsadm would show it: exit status and what to print.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Exit status (0 ok, 1 operation failed, 2 usage error).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Outcome {
    fn ok(stdout: String) -> Outcome {
        Outcome { code: 0, stdout, stderr: String::new() }
    }
    fn fail(code: i32, msg: impl std::fmt::Display) -> Outcome {
        Outcome { code, stdout: String::new(), stderr: format!("lvsadm: {msg}\n") }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Cmd {
    A,
    E,
    D,
    C,
    R,
    S,
    Ad,
    Ed,
    Dd,
    L,
    Z,
    Set,
    H,
    V,
    Map,
}

fn long_to_short(name: &str) -> Option<&'static str> {
    Some(match name {
        "add-service" => "A",
        "edit-service" => "E",
        "delete-service" => "D",
        "clear" => "C",
        "restore" => "R",
        "save" => "S",
        "add-server" => "a",
        "edit-server" => "e",
        "delete-server" => "d",
        "list" => "L",
        "zero" => "Z",
        "help" => "h",
        "version" => "v",
        "tcp-service" => "t",
        "udp-service" => "u",
        "fwmark-service" => "f",
        "scheduler" => "s",
        "persistent" => "p",
        "netmask" => "M",
        "real-server" => "r",
        "gatewaying" => "g",
        "ipip" => "i",
        "masquerading" => "m",
        "weight" => "w",
        "u-threshold" => "x",
        "l-threshold" => "y",
        "numeric" => "n",
        "connection" => "c",
        "sched-flags" => "b",
        _ => return None,
    })
}

/// Short options that take a value.
const WITH_VALUE: &str = "tufsMrwxyb";
/// Short options without a value.
const NO_VALUE: &str = "AEDCRSaedLlZhvngimcp";

/// Expands `-Ln` into `-L -n`, `-t1.2.3.4:80` into `-t 1.2.3.4:80`, `--x=y` into `--x y`.
fn normalize(args: &[String]) -> Result<Vec<String>, ArgError> {
    let mut out = Vec::new();
    for a in args {
        if let Some(long) = a.strip_prefix("--") {
            let (name, val) = match long.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (long, None),
            };
            out.push(format!("--{name}"));
            if let Some(v) = val {
                out.push(v.to_string());
            }
        } else if a.len() > 2 && a.starts_with('-') && !a[1..].starts_with(|c: char| c.is_ascii_digit()) {
            let body = &a[1..];
            let first = body.chars().next().expect("len > 2");
            if WITH_VALUE.contains(first) {
                out.push(format!("-{first}"));
                out.push(body[first.len_utf8()..].to_string());
            } else if body.chars().all(|c| NO_VALUE.contains(c)) {
                out.extend(body.chars().map(|c| format!("-{c}")));
            } else {
                return bad(format!("invalid option {a}"));
            }
        } else {
            out.push(a.clone());
        }
    }
    Ok(out)
}

fn parse_service(opt: &str, v: &str) -> Result<ServiceKey, ArgError> {
    match opt {
        "t" | "u" => {
            let addr = parse_sockaddr(v, None)
                .ok_or_else(|| ArgError(format!("illegal virtual server address[:port] specified: {v}")))?;
            Ok(if opt == "t" { ServiceKey::tcp(addr) } else { ServiceKey::udp(addr) })
        }
        _ => match v.parse::<u32>() {
            Ok(m) if m > 0 => Ok(ServiceKey::FwMark(m)),
            _ => bad(format!("illegal fwmark specified: {v}")),
        },
    }
}

/// Parses an ipvsadm argument list (without the program name).
pub fn parse_args(raw: &[String]) -> Result<Command, ArgError> {
    let args = normalize(raw)?;
    let mut cmd: Option<Cmd> = None;
    let mut key: Option<ServiceKey> = None;
    let mut sched: Option<SchedKind> = None;
    let mut persistent: Option<u32> = None;
    let mut netmask: Option<String> = None;
    let mut flags: Option<SchedFlags> = None;
    let mut real: Option<String> = None;
    let mut fwd: Option<Forward> = None;
    let mut weight: Option<i32> = None;
    let mut ux: Option<u32> = None;
    let mut ly: Option<u32> = None;
    let mut mode = ListMode::Plain;
    let mut exact = false;
    let mut set_vals: Vec<u32> = Vec::new();
    let mut map_mark: Option<u32> = None;
    let mut i = 0;
    let set_cmd = |cmd: &mut Option<Cmd>, c: Cmd| -> Result<(), ArgError> {
        if cmd.is_some_and(|old| old != c) {
            return bad("only one command at a time (-A, -E, -D, -C, -R, -S, -a, -e, -d, -L, -Z, --set)");
        }
        *cmd = Some(c);
        Ok(())
    };
    while i < args.len() {
        let a = args[i].as_str();
        i += 1;
        let opt: String = if let Some(long) = a.strip_prefix("--") {
            match long {
                "stats" => {
                    mode = ListMode::Stats;
                    continue;
                }
                "rate" => {
                    mode = ListMode::Rate;
                    continue;
                }
                "thresholds" => {
                    mode = ListMode::Thresholds;
                    continue;
                }
                "persistent-conn" => {
                    mode = ListMode::Persistent;
                    continue;
                }
                "timeout" => {
                    mode = ListMode::Timeout;
                    continue;
                }
                "exact" => {
                    exact = true;
                    continue;
                }
                "sort" | "nosort" => continue,
                "set" => {
                    set_cmd(&mut cmd, Cmd::Set)?;
                    for _ in 0..3 {
                        let v =
                            args.get(i).ok_or_else(|| ArgError("--set needs three values: tcp tcpfin udp".into()))?;
                        set_vals.push(v.parse().map_err(|_| ArgError(format!("illegal timeout value: {v}")))?);
                        i += 1;
                    }
                    continue;
                }
                "fwmark-map" => {
                    set_cmd(&mut cmd, Cmd::Map)?;
                    let v = args.get(i).ok_or_else(|| ArgError("--fwmark-map needs a mark".into()))?;
                    map_mark = Some(v.parse().map_err(|_| ArgError(format!("illegal fwmark specified: {v}")))?);
                    i += 1;
                    continue;
                }
                other => {
                    long_to_short(other).ok_or_else(|| ArgError(format!("unrecognized option --{other}")))?.to_string()
                }
            }
        } else if let Some(s) = a.strip_prefix('-') {
            if s.len() != 1 {
                return bad(format!("invalid option {a}"));
            }
            s.to_string()
        } else {
            // A positional service after -L/-Z is not ipvsadm syntax; refuse it clearly.
            return bad(format!("unexpected argument `{a}`"));
        };
        let value = |i: &mut usize| -> Result<String, ArgError> {
            let v = args.get(*i).ok_or_else(|| ArgError(format!("option -{opt} needs a value")))?;
            *i += 1;
            Ok(v.clone())
        };
        match opt.as_str() {
            "A" => set_cmd(&mut cmd, Cmd::A)?,
            "E" => set_cmd(&mut cmd, Cmd::E)?,
            "D" => set_cmd(&mut cmd, Cmd::D)?,
            "C" => set_cmd(&mut cmd, Cmd::C)?,
            "R" => set_cmd(&mut cmd, Cmd::R)?,
            "S" => set_cmd(&mut cmd, Cmd::S)?,
            "a" => set_cmd(&mut cmd, Cmd::Ad)?,
            "e" => set_cmd(&mut cmd, Cmd::Ed)?,
            "d" => set_cmd(&mut cmd, Cmd::Dd)?,
            "L" | "l" => set_cmd(&mut cmd, Cmd::L)?,
            "Z" => set_cmd(&mut cmd, Cmd::Z)?,
            "h" => set_cmd(&mut cmd, Cmd::H)?,
            "v" => set_cmd(&mut cmd, Cmd::V)?,
            "t" | "u" | "f" => {
                if key.is_some() {
                    return bad("only one service (-t, -u or -f) at a time");
                }
                let v = value(&mut i)?;
                key = Some(parse_service(&opt, &v)?);
            }
            "s" => {
                let v = value(&mut i)?;
                sched = Some(v.parse().map_err(|e| ArgError(format!("{e}")))?);
            }
            "p" => {
                let t = match args.get(i).and_then(|v| v.parse::<u32>().ok()) {
                    Some(t) => {
                        i += 1;
                        t
                    }
                    None => DEFAULT_PERSISTENCE_S,
                };
                if t == 0 {
                    return bad("illegal timeout value for persistent service: 0");
                }
                persistent = Some(t);
            }
            "M" => netmask = Some(value(&mut i)?),
            "b" => {
                let v = value(&mut i)?;
                let mut f = SchedFlags::default();
                for part in v.split(',') {
                    match part {
                        "sh-fallback" | "mh-fallback" | "flag-1" => f.fallback = true,
                        "sh-port" | "mh-port" | "flag-2" => f.port = true,
                        _ => return bad(format!("invalid scheduler flag: {part}")),
                    }
                }
                flags = Some(f);
            }
            "r" => real = Some(value(&mut i)?),
            "g" => fwd = Some(Forward::Route),
            "i" => fwd = Some(Forward::Tunnel),
            "m" => fwd = Some(Forward::Masq),
            "w" => {
                let v = value(&mut i)?;
                match v.parse::<i32>() {
                    Ok(w) if (0..=65535).contains(&w) => weight = Some(w),
                    _ => return bad(format!("illegal weight specified: {v}")),
                }
            }
            "x" => {
                let v = value(&mut i)?;
                ux = Some(v.parse().map_err(|_| ArgError(format!("illegal upper threshold specified: {v}")))?);
            }
            "y" => {
                let v = value(&mut i)?;
                ly = Some(v.parse().map_err(|_| ArgError(format!("illegal lower threshold specified: {v}")))?);
            }
            "n" => {}
            "c" => mode = ListMode::Conns,
            other => return bad(format!("invalid option -{other}")),
        }
    }
    let Some(cmd) = cmd else { return bad("no command given (try lvsadm -h)") };
    let need_key = |k: Option<ServiceKey>| k.ok_or_else(|| ArgError("a service is needed: -t, -u or -f".into()));
    let service_spec = |k: ServiceKey| -> Result<ServiceSpec, ArgError> {
        let mut spec = ServiceSpec::new(k);
        spec.sched = sched.unwrap_or_default();
        spec.flags = flags.unwrap_or_default();
        spec.persistent_s = persistent;
        if let Some(m) = &netmask {
            if persistent.is_none() {
                return bad("-M netmask needs -p (persistence)");
            }
            spec.netmask = match (m.parse::<std::net::Ipv4Addr>(), m.parse::<u8>()) {
                (Ok(mask), _) if { u32::from(mask).leading_ones() + u32::from(mask).trailing_zeros() == 32 } => {
                    NetMask::V4(mask)
                }
                (_, Ok(p)) if p <= 128 => NetMask::V6(p),
                _ => return bad(format!("illegal netmask specified: {m}")),
            };
        }
        Ok(spec)
    };
    let dest_spec = |k: ServiceKey| -> Result<DestSpec, ArgError> {
        let r = real.as_deref().ok_or_else(|| ArgError("a real server is needed: -r ADDR[:PORT]".into()))?;
        let default_port = match k {
            ServiceKey::Addr { addr, .. } => addr.port(),
            ServiceKey::FwMark(_) => 0,
        };
        let addr = parse_sockaddr(r, Some(default_port))
            .ok_or_else(|| ArgError(format!("illegal real server address[:port] specified: {r}")))?;
        let mut d = DestSpec::new(addr);
        d.weight = weight.unwrap_or(1);
        d.u_threshold = ux.unwrap_or(0);
        d.l_threshold = ly.unwrap_or(0);
        d.fwd = fwd.unwrap_or_default();
        Ok(d)
    };
    Ok(match cmd {
        Cmd::A => Command::AddService(service_spec(need_key(key)?)?),
        Cmd::E => Command::EditService(service_spec(need_key(key)?)?),
        Cmd::D => Command::DeleteService(need_key(key)?),
        Cmd::C => Command::Clear,
        Cmd::R => Command::Restore,
        Cmd::S => Command::Save,
        Cmd::Ad => {
            let k = need_key(key)?;
            Command::AddDest(k, dest_spec(k)?)
        }
        Cmd::Ed => {
            let k = need_key(key)?;
            Command::EditDest(k, dest_spec(k)?)
        }
        Cmd::Dd => {
            let k = need_key(key)?;
            Command::DeleteDest(k, dest_spec(k)?.addr)
        }
        Cmd::L => Command::List { key, mode, exact },
        Cmd::Z => Command::Zero(key),
        Cmd::Set => Command::SetTimeouts(Timeouts { tcp_s: set_vals[0], tcpfin_s: set_vals[1], udp_s: set_vals[2] }),
        Cmd::H => Command::Help,
        Cmd::V => Command::Version,
        Cmd::Map => match key {
            Some(ServiceKey::Addr { proto, addr }) => Command::MapMark(proto, addr, map_mark.filter(|m| *m != 0)),
            _ => return bad("--fwmark-map MARK needs -t or -u ADDR:PORT"),
        },
    })
}

/// Whether a command changes the table (the daemon then reconciles its listeners).
pub fn is_change(cmd: &Command) -> bool {
    !matches!(cmd, Command::List { .. } | Command::Save | Command::Help | Command::Version | Command::Zero(_))
}

/// The version line `ipvsadm -L` starts with.
pub const VERSION_LINE: &str = "IP Virtual Server version 1.2.1 (size=4096)";

/// What kind of failure a command met (the control protocol's error kinds and lvsadm's
/// exit status follow from it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminErrorKind {
    /// An invalid command line or rule (exit status 2).
    Usage,
    /// The service or real server does not exist (exit status 1).
    NotFound,
    /// The service or real server already exists (exit status 1).
    Exists,
    /// The table refused the change for another reason (exit status 1).
    Failed,
}

/// A command that failed, with the operator's message (without the `lvsadm: ` prefix).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct AdminError {
    /// What kind of failure.
    pub kind: AdminErrorKind,
    /// What happened.
    pub message: String,
}

impl AdminError {
    fn usage(message: impl Into<String>) -> AdminError {
        AdminError { kind: AdminErrorKind::Usage, message: message.into() }
    }

    /// lvsadm's exit status for this failure.
    pub fn code(&self) -> i32 {
        if self.kind == AdminErrorKind::Usage {
            2
        } else {
            1
        }
    }
}

impl From<ArgError> for AdminError {
    fn from(e: ArgError) -> AdminError {
        AdminError::usage(e.0)
    }
}

impl From<crate::table::TableError> for AdminError {
    fn from(e: crate::table::TableError) -> AdminError {
        use crate::table::TableError as T;
        let kind = match e {
            T::ServiceExists { .. } | T::DestExists { .. } => AdminErrorKind::Exists,
            T::NoService { .. } | T::NoDest { .. } => AdminErrorKind::NotFound,
            T::Invalid { .. } => AdminErrorKind::Failed,
        };
        AdminError { kind, message: e.to_string() }
    }
}

/// Runs one command. `stdin` feeds `-R`.
pub fn execute(d: &mut Director, cmd: Command, stdin: &str, now_ms: Millis) -> Outcome {
    match run(d, cmd, stdin, now_ms) {
        Ok(out) => Outcome::ok(out),
        Err(e) => Outcome::fail(e.code(), e),
    }
}

/// Runs one command and returns what it prints on standard output. `stdin` feeds `-R`.
pub fn run(d: &mut Director, cmd: Command, stdin: &str, now_ms: Millis) -> Result<String, AdminError> {
    match cmd {
        Command::AddService(s) => d.add_service(s)?,
        Command::EditService(s) => d.edit_service(s)?,
        Command::DeleteService(k) => d.delete_service(&k)?,
        Command::Clear => d.clear(),
        Command::AddDest(k, s) => d.add_dest(&k, s)?,
        Command::EditDest(k, s) => d.edit_dest(&k, s)?,
        Command::DeleteDest(k, a) => d.delete_dest(&k, a)?,
        Command::Zero(k) => d.zero(k.as_ref())?,
        Command::SetTimeouts(t) => d.timeouts = t,
        Command::MapMark(p, a, m) => d.set_mark(p, a, m),
        Command::Save => return Ok(save(d)),
        Command::List { key, mode, exact } => return Ok(list(d, key.as_ref(), mode, exact, now_ms)?),
        Command::Restore => restore(d, stdin, now_ms)?,
        Command::Help => return Ok(HELP.to_string()),
        Command::Version => return Ok(format!("lvsadm {} ({VERSION_LINE})\n", env!("CARGO_PKG_VERSION"))),
    }
    Ok(String::new())
}

fn restore(d: &mut Director, text: &str, now_ms: Millis) -> Result<(), AdminError> {
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut argv: Vec<String> = line.split_whitespace().map(str::to_string).collect();
        if argv.first().is_some_and(|a| a == "ipvsadm" || a == "lvsadm") {
            argv.remove(0);
        }
        let cmd = match parse_args(&argv) {
            Ok(Command::Restore | Command::List { .. } | Command::Save | Command::Help | Command::Version) => {
                return Err(AdminError::usage(format!("line {}: only table changes may be restored: {line}", n + 1)));
            }
            Ok(c) => c,
            Err(e) => return Err(AdminError::usage(format!("line {}: {e}: {line}", n + 1))),
        };
        run(d, cmd, "", now_ms)
            .map_err(|e| AdminError { kind: e.kind, message: format!("line {}: {}", n + 1, e.message) })?;
    }
    Ok(())
}

/// The scheduler flags as ipvsadm names them (`sh-fallback,sh-port`), if any are set.
fn sched_flag_names(sp: &crate::table::ServiceSpec) -> Option<String> {
    if sp.flags == SchedFlags::default() {
        return None;
    }
    let prefix = if sp.sched == SchedKind::Mh { "mh" } else { "sh" };
    let mut f = Vec::new();
    if sp.flags.fallback {
        f.push(format!("{prefix}-fallback"));
    }
    if sp.flags.port {
        f.push(format!("{prefix}-port"));
    }
    Some(f.join(","))
}

/// The persistence netmask, unless it is the full mask (which ipvsadm leaves out).
fn mask_text(netmask: NetMask) -> Option<String> {
    match netmask {
        NetMask::V4(m) if u32::from(m) != u32::MAX => Some(m.to_string()),
        NetMask::V6(p) if p != 128 => Some(p.to_string()),
        _ => None,
    }
}

fn service_line_rule(s: &crate::table::Service) -> String {
    let sp = &s.spec;
    let mut l = format!("-A {} -s {}", sp.key.to_option(), sp.sched);
    if let Some(f) = sched_flag_names(sp) {
        let _ = write!(l, " -b {f}");
    }
    if let Some(p) = sp.persistent_s {
        let _ = write!(l, " -p {p}");
        if let Some(m) = mask_text(sp.netmask) {
            let _ = write!(l, " -M {m}");
        }
    }
    l
}

/// The table in `ipvsadm-save -n` format (read back by `-R`).
pub fn save(d: &Director) -> String {
    let mut out = String::new();
    for s in d.services() {
        let _ = writeln!(out, "{}", service_line_rule(s));
        for x in &s.dests {
            let _ = write!(out, "-a {} -r {} {} -w {}", s.spec.key.to_option(), x.addr, x.fwd.flag(), x.weight);
            if x.u_threshold != 0 {
                let _ = write!(out, " -x {}", x.u_threshold);
            }
            if x.l_threshold != 0 {
                let _ = write!(out, " -y {}", x.l_threshold);
            }
            out.push('\n');
        }
    }
    out
}

/// ipvsadm's `print_largenum`.
fn largenum(out: &mut String, n: u64, exact: bool) {
    let _ = if exact {
        let len = n.to_string().len();
        write!(out, "{n:>w$}", w = if len <= 8 { 9 } else { len + 1 })
    } else if n < 100_000_000 {
        write!(out, "{n:>9}")
    } else if n < 1_000_000_000 {
        write!(out, "{:>8}K", n / 1000)
    } else if n < 100_000_000_000 {
        write!(out, "{:>8}M", n / 1_000_000)
    } else if n < 100_000_000_000_000 {
        write!(out, "{:>8}G", n / 1_000_000_000)
    } else {
        write!(out, "{:>8}T", n / 1_000_000_000_000)
    };
}

fn plain_service_line(s: &crate::table::Service) -> String {
    let sp = &s.spec;
    let mut l = format!("{} {}", sp.key, sp.sched);
    if let Some(f) = sched_flag_names(sp) {
        let _ = write!(l, " ({f})");
    }
    if let Some(p) = sp.persistent_s {
        let _ = write!(l, " persistent {p}");
        if let Some(m) = mask_text(sp.netmask) {
            let _ = write!(l, " mask {m}");
        }
    }
    l
}

/// `-L -n` in its modes, in ipvsadm's layout.
pub fn list(
    d: &Director,
    key: Option<&ServiceKey>,
    mode: ListMode,
    exact: bool,
    now_ms: Millis,
) -> Result<String, crate::table::TableError> {
    if let Some(k) = key {
        if d.service(k).is_none() {
            return Err(crate::table::TableError::NoService { key: *k });
        }
    }
    let mut out = String::new();
    if mode == ListMode::Timeout {
        let t = d.timeouts;
        let _ = writeln!(out, "Timeout (tcp tcpfin udp): {} {} {}", t.tcp_s, t.tcpfin_s, t.udp_s);
        return Ok(out);
    }
    if mode == ListMode::Conns {
        out.push_str(
            "IPVS connection entries\npro expire state       source             virtual            destination\n",
        );
        let mut conns: Vec<_> = d.conns().filter(|(_, c)| key.is_none_or(|k| *k == c.service)).collect();
        conns.sort_by_key(|(id, _)| **id);
        for (_, c) in conns {
            let e = d.expires_in_s(c, now_ms);
            let _ = writeln!(
                out,
                "{:<3} {:02}:{:02}  {:<11} {:<18} {:<18} {}",
                c.proto.upper(),
                e / 60,
                e % 60,
                c.state.name(),
                c.client.to_string(),
                c.vaddr.to_string(),
                c.daddr
            );
        }
        return Ok(out);
    }
    let _ = writeln!(out, "{VERSION_LINE}");
    out.push_str(match mode {
        ListMode::Stats => {
            "Prot LocalAddress:Port               Conns   InPkts  OutPkts  InBytes OutBytes\n  -> RemoteAddress:Port\n"
        }
        ListMode::Rate => {
            "Prot LocalAddress:Port                 CPS    InPPS   OutPPS    InBPS   OutBPS\n  -> RemoteAddress:Port\n"
        }
        ListMode::Thresholds => {
            "Prot LocalAddress:Port            Uthreshold Lthreshold ActiveConn InActConn\n  -> RemoteAddress:Port\n"
        }
        ListMode::Persistent => {
            "Prot LocalAddress:Port            Weight    PersistConn ActiveConn InActConn\n  -> RemoteAddress:Port\n"
        }
        _ => {
            "Prot LocalAddress:Port Scheduler Flags\n  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n"
        }
    });
    for s in d.services().iter().filter(|s| key.is_none_or(|k| *k == s.spec.key)) {
        let name = s.spec.key.to_string();
        match mode {
            ListMode::Stats => {
                let _ = write!(out, "{name:<33}");
                let st = &s.stats;
                for n in [st.conns, st.inpkts, st.outpkts, st.inbytes, st.outbytes] {
                    largenum(&mut out, n, exact);
                }
                out.push('\n');
            }
            ListMode::Rate => {
                let _ = write!(out, "{name:<33}");
                let r = &s.rate;
                for n in [r.cps, r.inpps, r.outpps, r.inbps, r.outbps] {
                    largenum(&mut out, n.round() as u64, exact);
                }
                out.push('\n');
            }
            _ => {
                let _ = writeln!(out, "{}", plain_service_line(s));
            }
        }
        for x in &s.dests {
            let dn = x.addr.to_string();
            match mode {
                ListMode::Stats => {
                    let _ = write!(out, "  -> {dn:<28}");
                    let st = &x.stats;
                    for n in [st.conns, st.inpkts, st.outpkts, st.inbytes, st.outbytes] {
                        largenum(&mut out, n, exact);
                    }
                    out.push('\n');
                }
                ListMode::Rate => {
                    // Per-server rates are not estimated; ipvsadm shows zeros for idle ones.
                    let _ = write!(out, "  -> {dn:<28}");
                    for _ in 0..5 {
                        largenum(&mut out, 0, exact);
                    }
                    out.push('\n');
                }
                ListMode::Thresholds => {
                    let _ = writeln!(
                        out,
                        "  -> {dn:<28} {:<10} {:<10} {:<10} {:<10}",
                        x.u_threshold, x.l_threshold, x.active, x.inactive
                    );
                }
                ListMode::Persistent => {
                    let _ = writeln!(
                        out,
                        "  -> {dn:<28} {:<9} {:<11} {:<10} {:<10}",
                        x.weight, x.persist, x.active, x.inactive
                    );
                }
                _ => {
                    let _ = writeln!(
                        out,
                        "  -> {dn:<28} {:<7} {:<6} {:<10} {:<10}",
                        x.fwd.name(),
                        x.weight,
                        x.active,
                        x.inactive
                    );
                }
            }
        }
    }
    Ok(out)
}

/// One real-server row of `-L -n`: address, weight, active and inactive connections.
pub type ListingRow = (SocketAddr, i32, u32, u32);

/// Parsed `-L -n` listing (for tests and scripts): per service, its rows.
pub fn parse_listing(text: &str) -> Vec<(String, Vec<ListingRow>)> {
    let mut out: Vec<(String, Vec<ListingRow>)> = Vec::new();
    for line in text.lines().skip(3) {
        if let Some(rest) = line.strip_prefix("  -> ") {
            let f: Vec<&str> = rest.split_whitespace().collect();
            if let (Some(cur), [a, _, w, ac, ina]) = (out.last_mut(), f.as_slice()) {
                if let (Ok(a), Ok(w), Ok(ac), Ok(ina)) = (a.parse(), w.parse(), ac.parse(), ina.parse()) {
                    cur.1.push((a, w, ac, ina));
                }
            }
        } else if !line.trim().is_empty() {
            let mut f = line.split_whitespace();
            let name = format!("{}  {}", f.next().unwrap_or(""), f.next().unwrap_or(""));
            out.push((name, Vec::new()));
        }
    }
    out
}

/// `lvsadm -h`.
pub const HELP: &str = "\
lvsadm: administer the userspace LVS director (lvsd) of this host, with ipvsadm's syntax.

USAGE
    lvsadm -A|E -t|u|f SERVICE [-s SCHEDULER] [-p [TIMEOUT]] [-M NETMASK] [-b FLAGS]
    lvsadm -D -t|u|f SERVICE
    lvsadm -C
    lvsadm -R                  (ipvsadm-save rules on standard input)
    lvsadm -S [-n]
    lvsadm -a|e -t|u|f SERVICE -r SERVER[:PORT] [-g|i|m] [-w WEIGHT] [-x UPPER] [-y LOWER]
    lvsadm -d -t|u|f SERVICE -r SERVER[:PORT]
    lvsadm -L|l [-t|u|f SERVICE] [-n] [--stats|--rate|--thresholds|--persistent-conn|-c|--timeout] [--exact]
    lvsadm -Z [-t|u|f SERVICE]
    lvsadm --set TCP TCPFIN UDP
    lvsadm --fwmark-map MARK -t|u ADDR:PORT     (MARK 0 removes the mapping)
    lvsadm -h | -v

OPTIONS
    -t, --tcp-service ADDR:PORT   TCP virtual service
    -u, --udp-service ADDR:PORT   UDP virtual service
    -f, --fwmark-service MARK     firewall-mark service (see --fwmark-map)
    -s, --scheduler NAME          rr wrr lc wlc (default) sed nq lblc lblcr dh sh mh
    -p, --persistent [TIMEOUT]    persistence, seconds (default 300)
    -M, --netmask MASK            persistence granularity (default 255.255.255.255)
    -b, --sched-flags FLAGS       sh-fallback, sh-port, mh-fallback, mh-port
    -r, --real-server ADDR[:PORT] real server (port defaults to the service's)
    -g, -i, -m                    forwarding method (shown only: the proxy always does NAT)
    -w, --weight N                0..65535; 0 quiesces (no new connections)
    -x, -y                        upper and lower connection thresholds (0: none)
    -n, --numeric                 accepted; output is always numeric
    -c, --connection              list connection entries
    --stats, --rate, --exact      counters, rates, exact numbers

ENVIRONMENT
    LVSD_SOCKET   control socket of the director (default /run/lvsd/lvsd.sock)

EXAMPLES
    lvsadm -A -t 10.0.0.1:80 -s wrr
    lvsadm -a -t 10.0.0.1:80 -r 192.168.1.2:80 -m -w 3
    lvsadm -e -t 10.0.0.1:80 -r 192.168.1.2:80 -m -w 0     # quiesce
    lvsadm -L -n --stats
    lvsadm -S -n > rules && lvsadm -C && lvsadm -R < rules

FILES
    /run/lvsd/lvsd.sock           the director's control socket

EXIT STATUS
    0 success; 1 the director refused the change (message on stderr) or is not running;
    2 invalid command line.
";

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    fn run(d: &mut Director, s: &str) -> Outcome {
        match parse_args(&args(s)) {
            Ok(c) => execute(d, c, "", 0),
            Err(e) => Outcome::fail(2, e),
        }
    }

    #[test]
    fn build_list_save_restore() {
        let mut d = Director::new();
        for c in [
            "-A -t 10.0.0.1:80 -s wrr -p 60 -M 255.255.255.0",
            "-a -t 10.0.0.1:80 -r 192.168.1.1 -m -w 3",
            "-a -t 10.0.0.1:80 -r 192.168.1.2:8080 -g -w 1 -x 100 -y 50",
            "-A -u 10.0.0.1:53 -s sh -b sh-fallback,sh-port",
            "-a -u 10.0.0.1:53 -r 192.168.1.3",
            "-A -f 7",
            "-a -f 7 -r 192.168.1.4",
        ] {
            assert_eq!(run(&mut d, c).code, 0, "{c}: {:?}", run(&mut d, c));
        }
        let saved = run(&mut d, "-S -n").stdout;
        assert_eq!(
            saved,
            "-A -t 10.0.0.1:80 -s wrr -p 60 -M 255.255.255.0\n\
             -a -t 10.0.0.1:80 -r 192.168.1.1:80 -m -w 3\n\
             -a -t 10.0.0.1:80 -r 192.168.1.2:8080 -g -w 1 -x 100 -y 50\n\
             -A -u 10.0.0.1:53 -s sh -b sh-fallback,sh-port\n\
             -a -u 10.0.0.1:53 -r 192.168.1.3:53 -m -w 1\n\
             -A -f 7 -s wlc\n\
             -a -f 7 -r 192.168.1.4:0 -m -w 1\n"
        );
        let listing = run(&mut d, "-Ln").stdout;
        assert!(listing.starts_with(VERSION_LINE));
        assert!(listing.contains("TCP  10.0.0.1:80 wrr persistent 60 mask 255.255.255.0\n"), "{listing}");
        assert!(
            listing.contains("  -> 192.168.1.1:80               Masq    3      0          0         \n"),
            "{listing}"
        );
        assert!(listing.contains("UDP  10.0.0.1:53 sh (sh-fallback,sh-port)\n"), "{listing}");
        let parsed = parse_listing(&listing);
        assert_eq!(parsed.len(), 3);
        assert_eq!(parsed[0].1[1], ("192.168.1.2:8080".parse().unwrap(), 1, 0, 0));
        // Clear and restore gives the same table.
        assert_eq!(run(&mut d, "-C").code, 0);
        assert_eq!(run(&mut d, "-S").stdout, "");
        let out = execute(&mut d, Command::Restore, &saved, 0);
        assert_eq!(out.code, 0, "{out:?}");
        assert_eq!(run(&mut d, "-S").stdout, saved);
    }

    #[test]
    fn errors() {
        let mut d = Director::new();
        assert_eq!(run(&mut d, "-a -t 10.0.0.1:80 -r 1.2.3.4").code, 1);
        assert_eq!(run(&mut d, "-A -t 10.0.0.1 -s wlc").code, 2);
        assert_eq!(run(&mut d, "-A -t 10.0.0.1:80 -s nope").code, 2);
        assert_eq!(run(&mut d, "-A -D -t 10.0.0.1:80").code, 2);
        assert_eq!(run(&mut d, "-A -t 10.0.0.1:80 -M 255.0.0.0").code, 2);
        assert_eq!(run(&mut d, "").code, 2);
        assert_eq!(run(&mut d, "-A -t 10.0.0.1:80").code, 0);
        let o = run(&mut d, "-A -t 10.0.0.1:80");
        assert_eq!((o.code, o.stderr.as_str()), (1, "lvsadm: Service already exists: TCP  10.0.0.1:80\n"));
        assert_eq!(run(&mut d, "-a -t 10.0.0.1:80 -r 1.2.3.4 -w 70000").code, 2);
        let o = execute(&mut d, Command::Restore, "-A -t 10.0.0.2:80\n-a -t 10.0.0.9:80 -r 1.1.1.1\n", 0);
        assert_eq!(o.code, 1);
        assert!(o.stderr.contains("line 2"), "{o:?}");
    }

    #[test]
    fn getopt_forms() {
        let a = parse_args(&args("-Ln --stats")).unwrap();
        assert_eq!(a, Command::List { key: None, mode: ListMode::Stats, exact: false });
        let a = parse_args(&args("-A -t10.0.0.1:80 --scheduler=rr -p")).unwrap();
        let Command::AddService(s) = a else { panic!() };
        assert_eq!((s.sched, s.persistent_s), (SchedKind::Rr, Some(300)));
        let a =
            parse_args(&args("--add-server --tcp-service 10.0.0.1:80 --real-server 10.1.1.1:81 --weight 0")).unwrap();
        let Command::AddDest(_, d) = a else { panic!() };
        assert_eq!(d.weight, 0);
        assert_eq!(
            parse_args(&args("-lnc")).unwrap(),
            Command::List { key: None, mode: ListMode::Conns, exact: false }
        );
        assert_eq!(
            parse_args(&args("--set 10 20 30")).unwrap(),
            Command::SetTimeouts(Timeouts { tcp_s: 10, tcpfin_s: 20, udp_s: 30 })
        );
        assert!(parse_args(&args("-Lq")).is_err());
    }

    #[test]
    fn stats_and_conns_listing() {
        let mut d = Director::new();
        run(&mut d, "-A -t 10.0.0.1:80 -s rr");
        run(&mut d, "-a -t 10.0.0.1:80 -r 192.168.1.1:80");
        let c = d.connect(Protocol::Tcp, "1.2.3.4:5000".parse().unwrap(), "10.0.0.1:80".parse().unwrap(), 0).unwrap();
        d.established(c.conn);
        d.account(c.conn, &crate::Stats { conns: 0, inpkts: 2, outpkts: 3, inbytes: 200, outbytes: 123_456_789_012 });
        let s = run(&mut d, "-L -n --stats").stdout;
        assert!(s.contains("TCP  10.0.0.1:80                         1        2        3      200     123G\n"), "{s}");
        let s = run(&mut d, "-L -n --stats --exact").stdout;
        assert!(s.contains(" 123456789012"), "{s}");
        let s = run(&mut d, "-L -n -c").stdout;
        assert!(s.contains("TCP 15:00  ESTABLISHED 1.2.3.4:5000       10.0.0.1:80        192.168.1.1:80"), "{s}");
        assert_eq!(run(&mut d, "-Z").code, 0);
        assert!(run(&mut d, "-L -n --stats").stdout.contains("TCP  10.0.0.1:80                         0        0"));
        assert_eq!(run(&mut d, "-L --timeout").stdout, "Timeout (tcp tcpfin udp): 900 120 300\n");
    }

    proptest! {
        #[test]
        fn prop_parse_never_panics(v in prop::collection::vec("[-a-zA-Z0-9.:=,]{0,12}", 0..8)) {
            let _ = parse_args(&v);
        }

        #[test]
        fn prop_save_restore_round_trip(
            svcs in prop::collection::vec((1u8..250, 1u16..1000, prop::sample::select(SchedKind::ALL.to_vec()),
                prop::option::of(1u32..1000), prop::collection::vec((1u8..250, 0i32..100, 0u32..50), 0..4)), 0..4)
        ) {
            let mut d = Director::new();
            for (a, port, sched, p, dests) in &svcs {
                let mut line = format!("-A -t 10.0.0.{a}:{port} -s {sched}");
                if let Some(p) = p { line.push_str(&format!(" -p {p}")); }
                let _ = run(&mut d, &line);
                for (r, w, x) in dests {
                    let _ = run(&mut d, &format!("-a -t 10.0.0.{a}:{port} -r 10.1.0.{r}:80 -w {w} -x {x}"));
                }
            }
            let saved = save(&d);
            let mut d2 = Director::new();
            let out = execute(&mut d2, Command::Restore, &saved, 0);
            prop_assert_eq!(out.code, 0);
            prop_assert_eq!(save(&d2), saved);
        }
    }
}
