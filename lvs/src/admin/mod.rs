//! ipvsadm's command language: argument parsing (getopt style: `-Ln`, `-t10.0.0.1:80`,
//! `--tcp-service=...`), execution against a [`Director`], `-L` listings and the
//! `ipvsadm-save` rule format read back by `-R`. Parsing is in `args`, listings and the
//! save format in `listing`; this file holds the commands and their execution.

mod args;
mod listing;

pub use args::parse_args;
pub use listing::{list, parse_listing, save, ListingRow};

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
