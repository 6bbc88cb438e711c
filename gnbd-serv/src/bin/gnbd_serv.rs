//! `gnbd_serv`: the export daemon. Flags and daemonisation only; the server is
//! `gnbd_serv::server::run`.
// Only the fork of `daemonize` is unsafe (`gnbd_serv::daemon::fork`).
#![deny(unsafe_code)]

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{ArgAction, Parser};
use daemon::background::{daemonize, Background};
use daemon::log::{LogArgs, LogConfig};
use gnbd_serv::server::{run, ServeConfig, DEFAULT_PORT};
use gnbd_serv::tls::TlsSettings;
use nbd_proto::TlsPolicy;

const NAME: &str = "gnbd_serv";

const AFTER_HELP: &str = "\
DESCRIPTION
    gnbd_serv serves regular files and block devices to NBD clients (gnbd_import, nbd-client,
    qemu, nbdcopy, nbdinfo, fio) using the fixed-newstyle NBD protocol: structured replies,
    extended headers, base:allocation block status, multi-conn, TRIM, WRITE_ZEROES, FUA and
    FLUSH. The data path runs on io_uring, one ring per worker thread. Exports are added and
    removed at run time with gnbd_export and persist in the state directory, so a restarted
    server serves the same exports. By default exports are uncached (O_DIRECT), as with GNBD;
    an acknowledged FLUSH or FUA write is on stable storage.

EXAMPLES
    Start a server for local tests and export a file:
        gnbd_serv --state-dir /tmp/gnbd -p 10809 --bind 127.0.0.1
        gnbd_export --state-dir /tmp/gnbd -e disk0 -d /srv/disk0.img
        nbdinfo nbd://127.0.0.1:10809/disk0

    Serve over TLS only, verifying client certificates against a CA:
        gnbd_serv --tls-cert /etc/gnbd/server-cert.pem --tls-key /etc/gnbd/server-key.pem \
            --tls-ca /etc/gnbd/ca-cert.pem

    Run attached to the terminal with debug logs, on a free port:
        RUST_LOG=debug gnbd_serv --state-dir /tmp/gnbd -p 0 --foreground

FILES
    STATE_DIR/gnbd_serv.sock    control socket used by gnbd_export
    STATE_DIR/exports.json      persisted exports
    STATE_DIR/bans.json         fenced nodes (persisted before a fence is acknowledged)
    STATE_DIR/gnbd_serv.pid     pid of the running server (locked while it runs)
    STATE_DIR/gnbd_serv.log     log of a daemonised server
    --tls-cert, --tls-key, --tls-ca   PEM files (the key should be readable by root only)

FENCING
    With --nodes, each client connection belongs to the cluster node its address is listed
    for. A fence order (control socket verb `fence`; the fence_gnbd agent) persists the ban,
    cuts the node's connections, waits until their in-flight I/O is finished, and only then
    answers: from that moment not one byte from the node reaches an export. The node's new
    connections are refused (NBD_REP_ERR_POLICY) until it is unfenced, across restarts.
    With --cluster-key, fence orders also arrive over TCP (--control-port, default 10810),
    signed with the cluster key (HMAC-SHA256 over a per-connection challenge): fence_gnbd on
    any node can fence. Unsigned or forged orders are refused and logged. With TLS and
    --tls-ca the control channel is open as well and also takes orders over TLS from a client
    certificate the CA signed that names a node of the cluster (not itself fenced):
    fence_gnbd --tls-certificates DIR.

TLS
    With --tls-cert and --tls-key the server offers STARTTLS (NBD_OPT_STARTTLS) with TLS 1.2
    and 1.3 (rustls). --tls required refuses every client that does not upgrade; --tls
    selective lets plain-text clients open the exports not created with gnbd_export --tls.
    With --tls-ca, every TLS client must present a certificate signed by that CA; it names the
    client's cluster node (subject CN, else the first DNS subjectAltName), and a certificate
    naming a node other than the one the client's address belongs to is refused. With
    --cluster, the certificate must name a node of the node table. Standard clients work:
        nbdinfo 'nbds://127.0.0.1/disk0?tls-certificates=/etc/gnbd/client'
    (the directory holds ca-cert.pem, client-cert.pem and client-key.pem).

SIGNALS
    SIGTERM, SIGINT   stop accepting, finish and answer in-flight requests, exit 0.
    SIGHUP            reopen the log file and reread the node table (--nodes); a table that
                      does not parse is reported and the old one stays. Never stops the server.

LOGGING
    --log-level LEVEL (or RUST_LOG, or -v/-vv) sets what is logged; the default is info.
    Daemonised, the log is STATE_DIR/gnbd_serv.log (or --log-file); with --foreground it
    goes to stderr, or to the journal with priorities when systemd runs the server.

EXIT STATUS
    0   stopped cleanly (or, daemonising, the daemon is ready)
    1   could not start: the message says why (port in use, state directory locked, ...)";

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum TlsMode {
    Off,
    Selective,
    Required,
}

/// GNBD export server: serve files and block devices over NBD.
#[derive(Debug, Parser)]
#[command(name = "gnbd_serv", version, after_long_help = AFTER_HELP)]
struct Args {
    /// Directory for the control socket, persisted exports, pid file and log.
    #[arg(long, value_name = "DIR", default_value = gnbd_serv::server::DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// TCP port to listen on; 0 picks a free port (printed in the ready line).
    #[arg(short = 'p', long, value_name = "PORT", default_value_t = DEFAULT_PORT)]
    port: u16,
    /// Address to listen on.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0")]
    bind: IpAddr,
    /// Also listen on this Unix socket (nbd+unix:///NAME?socket=PATH).
    #[arg(long, value_name = "PATH")]
    unix: Option<PathBuf>,
    /// Stay attached: log to stderr (or --log-file) and print a line containing `ready` on
    /// stdout once connections are accepted (and tell systemd, under Type=notify).
    #[arg(short = 'f', long)]
    foreground: bool,
    /// Worker threads, each with its own io_uring (0: one per CPU).
    #[arg(long, value_name = "N", default_value_t = 0)]
    threads: usize,
    /// Export served to clients that ask for the empty name (default: the only export, if
    /// there is exactly one).
    #[arg(long, value_name = "NAME")]
    default_export: Option<String>,
    /// Node table: one line per cluster node, `NODE ADDRESS [ADDRESS...]` (the addresses
    /// cluster.conf gives the node). Connections are attributed to nodes by address, which is
    /// what fence orders act on.
    #[arg(long, value_name = "FILE")]
    nodes: Option<PathBuf>,
    /// Cluster mode: refuse clients whose address is not in the node table.
    #[arg(long, requires = "nodes")]
    cluster: bool,
    /// Cluster key file (root-only, at least 32 random bytes, the same on every node): turns on
    /// the network control channel, which accepts fence, unfence and ban-list orders signed
    /// with this key (fence_gnbd) and refuses all others.
    #[arg(long, value_name = "FILE")]
    cluster_key: Option<PathBuf>,
    /// TCP port of the network control channel for fence orders, open with --cluster-key or
    /// with TLS and --tls-ca (0: a free port, shown in the ready line).
    #[arg(long, value_name = "PORT", default_value_t = gnbd_serv::netctl::DEFAULT_CONTROL_PORT)]
    control_port: u16,
    /// TLS mode: off; selective (STARTTLS offered, exports created with `gnbd_export --tls`
    /// need it); required (every option but STARTTLS is refused until TLS is up). Default:
    /// required when --tls-cert is given, else off.
    #[arg(long, value_name = "MODE", value_enum)]
    tls: Option<TlsMode>,
    /// Server certificate chain (PEM, leaf first).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// Private key of --tls-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// CA certificate(s) (PEM) that sign client certificates: every TLS client must then
    /// present a certificate signed by it, and its node is the certificate's subject CN (else
    /// its first DNS name). Required for TLS with --cluster.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_ca: Option<PathBuf>,
    /// More log output (-v: debug, -vv: trace); --log-level and RUST_LOG override it.
    #[arg(short, long, action = ArgAction::Count)]
    verbose: u8,
    #[command(flatten)]
    log: LogArgs,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let cfg = match config(&args) {
        Ok(c) => c,
        Err(e) => return daemon::exit::fail(NAME, e.as_ref()),
    };
    // Without --foreground: start again in the background, log to STATE_DIR/gnbd_serv.log,
    // return once the server accepts connections (printing its ready line).
    let log = args.log.log_file.clone().unwrap_or_else(|| cfg.state_dir.join("gnbd_serv.log"));
    if let Some(code) = daemonize(args.foreground, &Background::new(NAME, Some(log))) {
        return code;
    }
    daemon::finish(NAME, serve(&args, cfg))
}

fn serve(args: &Args, cfg: ServeConfig) -> anyhow::Result<()> {
    let level = match args.verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    daemon::log::init(&LogConfig::new(level, &args.log))?;
    run(cfg, daemon::ready::ready)
}

fn config(args: &Args) -> anyhow::Result<ServeConfig> {
    let policy = match (args.tls, &args.tls_cert) {
        (Some(TlsMode::Off), _) | (None, None) => TlsPolicy::Off,
        (Some(TlsMode::Selective), Some(_)) => TlsPolicy::Selective,
        (Some(TlsMode::Required) | None, Some(_)) => TlsPolicy::Required,
        (Some(_), None) => anyhow::bail!("--tls selective/required needs --tls-cert FILE and --tls-key FILE"),
    };
    let abs = |p: &PathBuf| gnbd_serv::state::absolute_dir(p);
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) if policy != TlsPolicy::Off => {
            Some(TlsSettings { policy, cert: abs(cert), key: abs(key), ca: args.tls_ca.as_ref().map(abs) })
        }
        _ => None,
    };
    Ok(ServeConfig {
        state_dir: abs(&args.state_dir),
        bind: args.bind,
        port: args.port,
        unix: args.unix.clone(),
        threads: args.threads,
        default_export: args.default_export.clone(),
        nodes: args.nodes.as_ref().map(abs),
        cluster: args.cluster,
        cluster_key: args.cluster_key.as_ref().map(abs),
        control_port: args.control_port,
        tls,
    })
}
