//! `gnbd_import`: import gnbd (NBD) exports as local block devices, and fence nodes.
#![forbid(unsafe_code)]

use anyhow::Context;
use clap::{ArgGroup, Parser};
use daemon::background::{daemonize, Background};
use daemon::log::{LogArgs, LogConfig};
use daemon::Failure;
use gnbd_import::admin::{run, Action, Env, DEFAULT_PORT};
use gnbd_import::{run_device, ConnectOptions, DeviceConfig, DEFAULT_DEV_DIR, DEFAULT_STATE_DIR};
use std::path::PathBuf;
use std::process::ExitCode;

const NAME: &str = "gnbd_import";

const AFTER_HELP: &str = "\
DESCRIPTION
    gnbd_import makes the exports of a gnbd server (gnbd_serv, or any NBD server) usable
    as local block devices. Each imported export gets its own background process that
    keeps the device alive after gnbd_import returns: it holds the connection(s) to the
    server, reconnects when a connection drops and sends again every request that had no
    answer, so a server restart is invisible to the device's users.

    This kernel has no NBD driver, so the device is a loop device attached to a file
    that the import process serves through FUSE; the stable name DEV_DIR/NAME
    (/dev/gnbd/NAME) points at it. Reads, writes, flushes (fsync on the device reaches
    the server's stable storage) and discards pass straight through; the importing
    node keeps no cache of the export's data.

    Without -t, I/O waits for an unreachable server forever (a cluster filesystem on
    top then waits too). With -t SECS, requests fail with EIO once the server has been
    unreachable for SECS seconds (GNBD's timeout mode). A node fenced by the server gets
    EIO at once, for good, until it is unfenced and the export imported again.

    The fencing verbs (-s, -u, -c) send signed orders to the servers' network control
    channels (port 10810 unless SERVER says HOST:PORT), authenticated with the cluster
    key (-k). They are what the fence_gnbd agent does, by hand.

EXAMPLES
    List what a server exports, then import all of it, or one export:
        gnbd_import -e srv1
        gnbd_import -i srv1
        gnbd_import -i srv1 -n disk0 -t 30

    Use the device, then remove the import:
        mkfs.ext4 /dev/gnbd/disk0 && mount /dev/gnbd/disk0 /mnt
        umount /mnt && gnbd_import -r disk0

    See the imports and their connection state:
        gnbd_import -l

    Import over TLS, this node named by its certificate:
        gnbd_import -i srv1 --tls-certificates /etc/gnbd/client

    Fence node3 on srv1, list srv1's bans, let node3 back:
        gnbd_import -s node3 -t srv1
        gnbd_import -c srv1
        gnbd_import -u node3 -t srv1

FILES
    /var/lib/gnbd/imports/NAME.json   an import's record (--state-dir changes the root)
    /var/lib/gnbd/imports/NAME.sock   its device process's control socket (the suite's
                                      control protocol: {\"op\":\"status\"},
                                      {\"op\":\"stop\",\"force\":BOOL}; root only)
    /var/lib/gnbd/imports/NAME.log    its device process's log
    /var/lib/gnbd/imports/NAME.mnt/   the FUSE mount holding the file the loop device uses
    /dev/gnbd/NAME                    the stable device name (--dev-dir changes it)
    /etc/cluster/gnbd.key             the cluster key for -s, -u and -c (-k changes it)

SIGNALS
    gnbd_import itself runs to completion. An import's device process (its pid is in
    gnbd_import -l --json) reacts to:
    SIGTERM, SIGINT   remove the device and exit 0, as `gnbd_import -r -f NAME` does:
                      detach the loop device, unmount the FUSE file, remove /dev/gnbd/NAME
                      and the record (users of a device still in use get EIO).
    SIGHUP            reopen its log file (for log rotation). It has no configuration to
                      reload; SIGHUP never stops it.

LOGGING
    --log-level LEVEL (or RUST_LOG) sets what is logged: error, warn, info, debug, trace or
    a filter such as info,gnbd_client=debug. gnbd_import logs warnings and errors to stderr
    (--log-file FILE instead); with -i the level is passed on to the device processes, which
    log at info by default to STATE_DIR/imports/NAME.log.

EXIT STATUS
    0   done
    1   failed: the server cannot be reached or refused, the name is taken, the device
        is in use, the order was refused, ...: one line on stderr, gnbd_import: what: why
        (with several names, -i and -R say how many failed and why, on one line)
    2   bad usage";

/// Import gnbd exports as local block devices; fence nodes on gnbd servers.
#[derive(Debug, Parser)]
#[command(name = "gnbd_import", version, after_long_help = AFTER_HELP)]
#[command(group(ArgGroup::new("action").args(
    ["exports", "import", "list", "remove", "remove_all", "fence", "unfence", "bans"]
)))]
struct Args {
    /// List the exports SERVER offers.
    #[arg(short = 'e', long = "exports", value_name = "SERVER")]
    exports: Option<String>,
    /// Import SERVER's exports (all of them, or the one named with -n).
    #[arg(short = 'i', long = "import", value_name = "SERVER")]
    import: Option<String>,
    /// With -i: import only export NAME (also the device name: /dev/gnbd/NAME).
    #[arg(short = 'n', long = "name", value_name = "NAME", requires = "import")]
    name: Option<String>,
    /// With -i: I/O timeout in seconds (0: wait for the server forever). With -s/-u: the
    /// server to send the order to (HOST[:CONTROL_PORT]).
    #[arg(short = 't', value_name = "SECS|SERVER")]
    t: Option<String>,
    /// With -i: connections per device when the server offers multi-conn (requests are
    /// spread over them; one is used otherwise).
    #[arg(short = 'C', long = "connections", value_name = "N", default_value_t = 4, requires = "import")]
    connections: usize,
    /// With -i: import read-only.
    #[arg(long = "read-only", requires = "import")]
    read_only: bool,
    /// List imported devices: name, state (connected, reconnecting, failed, dead),
    /// device, loop device, size, server and export.
    #[arg(short = 'l', long = "list")]
    list: bool,
    /// With -l: print JSON, with I/O counters.
    #[arg(long, requires = "list")]
    json: bool,
    /// Remove import NAME: detach the loop device, remove /dev/gnbd/NAME, stop its process.
    #[arg(short = 'r', long = "remove", value_name = "NAME")]
    remove: Option<String>,
    /// Remove every import.
    #[arg(short = 'R', long = "remove-all")]
    remove_all: bool,
    /// With -r/-R: remove even while the device is mounted or open (its users get EIO).
    #[arg(short = 'f', long = "force")]
    force: bool,
    /// Fence NODE on the server given with -t.
    #[arg(short = 's', long = "fence", value_name = "NODE", requires = "t")]
    fence: Option<String>,
    /// Unfence NODE on the server given with -t.
    #[arg(short = 'u', long = "unfence", value_name = "NODE", requires = "t")]
    unfence: Option<String>,
    /// List the nodes SERVER has banned (fenced).
    #[arg(short = 'c', long = "bans", value_name = "SERVER")]
    bans: Option<String>,
    /// Cluster key file for -s, -u and -c (mode 0600, the servers' --cluster-key).
    #[arg(short = 'k', long = "cluster-key", value_name = "FILE", default_value = gnbd_fence::DEFAULT_KEY)]
    key: PathBuf,
    /// NBD port of servers given without one.
    #[arg(short = 'p', long = "port", value_name = "PORT", default_value_t = DEFAULT_PORT)]
    port: u16,
    /// Connect with STARTTLS using the certificates in DIR, laid out as for libnbd and qemu:
    /// ca-cert.pem, and client-cert.pem + client-key.pem (this node's identity) when present.
    /// With -s, -u and -c: send the order over TLS, authenticated by this node's certificate,
    /// instead of signing it with the cluster key.
    #[arg(long, value_name = "DIR", conflicts_with = "tls_ca")]
    tls_certificates: Option<PathBuf>,
    /// Connect with STARTTLS; the server's certificate must be signed by this CA (PEM).
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<PathBuf>,
    /// This node's certificate (PEM), for servers that identify nodes by certificate.
    #[arg(long, value_name = "FILE", requires = "tls_key", requires = "tls_ca")]
    tls_cert: Option<PathBuf>,
    /// Private key of --tls-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Local address to connect from: the node's cluster address, by which servers
    /// without TLS tell nodes apart.
    #[arg(long, value_name = "ADDR")]
    source: Option<std::net::IpAddr>,
    /// Directory for import records, control sockets, logs and FUSE mounts.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// Directory of the stable device names.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_DEV_DIR)]
    dev_dir: PathBuf,
    /// Internal: run as the device process described by the JSON argument.
    #[arg(long, value_name = "JSON", hide = true, conflicts_with = "action")]
    run_device: Option<String>,
    #[command(flatten)]
    log: LogArgs,
}

fn main() -> ExitCode {
    let a = Args::parse();
    if let Some(json) = &a.run_device {
        return device_main(json, &a.log);
    }
    daemon::finish(NAME, cli(a))
}

fn cli(a: Args) -> anyhow::Result<()> {
    daemon::log::init(&LogConfig::new("warn", &a.log))?;
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("gnbd_import"));
    let tls_dir = a.tls_certificates.map(absolute);
    let connect = match &tls_dir {
        Some(dir) => {
            let t = gnbd_client::TlsOptions::from_dir(dir);
            ConnectOptions { tls_ca: Some(t.ca), tls_cert: t.cert, tls_key: t.key, source: a.source }
        }
        None => ConnectOptions {
            tls_ca: a.tls_ca.map(absolute),
            tls_cert: a.tls_cert.map(absolute),
            tls_key: a.tls_key.map(absolute),
            source: a.source,
        },
    };
    let env = Env {
        state_dir: absolute(a.state_dir),
        dev_dir: absolute(a.dev_dir),
        port: a.port,
        exe,
        connect,
        log_level: a.log.log_level.clone(),
    };
    let action = if let Some(server) = a.exports {
        Action::ListExports { server }
    } else if let Some(server) = a.import {
        let timeout_secs = match a.t.as_deref().map(str::parse::<u64>) {
            None => 0,
            Some(Ok(s)) => s,
            Some(Err(_)) => return Err(usage("with -i, -t takes the I/O timeout in seconds")),
        };
        Action::Import { server, name: a.name, timeout_secs, connections: a.connections, read_only: a.read_only }
    } else if a.list {
        Action::List { json: a.json }
    } else if a.remove.is_some() || a.remove_all {
        Action::Remove { name: a.remove, force: a.force }
    } else if let Some(node) = a.fence.or(a.unfence.clone()) {
        let action = if a.unfence.is_some() { "on" } else { "off" };
        let server = a.t.expect("clap requires -t");
        Action::Fence { action, node: Some(node), server, key: a.key, tls_dir }
    } else if let Some(server) = a.bans {
        Action::Fence { action: "list", node: None, server, key: a.key, tls_dir }
    } else {
        return Err(usage("say what to do: -e, -i, -l, -r, -R, -s, -u or -c"));
    };
    let mut out = std::io::stdout().lock();
    run(&env, action, &mut out)
}

/// Records, mounts and links hold absolute paths: device processes and later runs may
/// start from other directories.
fn absolute(p: PathBuf) -> PathBuf {
    std::path::absolute(&p).unwrap_or(p)
}

/// A usage error found after parsing: exit 2, like clap's.
fn usage(msg: &str) -> anyhow::Error {
    Failure::new(2, format!("{msg} (see gnbd_import --help)")).into()
}

/// `--run-device`: started by `gnbd_import -i`, daemonises (the waiting parent exits once
/// the device is ready, or with the device process's error) and runs the device.
fn device_main(json: &str, log: &LogArgs) -> ExitCode {
    let cfg: DeviceConfig = match serde_json::from_str(json) {
        Ok(c) => c,
        Err(e) => return daemon::finish(NAME, Err(Failure::new(2, format!("bad device configuration: {e}")))),
    };
    if let Some(code) = daemonize(false, &Background::new(NAME, Some(cfg.log_path()))) {
        return code;
    }
    daemon::finish(NAME, device_process(cfg, log))
}

fn device_process(cfg: DeviceConfig, log: &LogArgs) -> anyhow::Result<()> {
    let signals = daemon::signals::install().context("cannot install the signal handlers")?;
    daemon::log::init(&LogConfig::new("info", log).with_file(Some(cfg.log_path())))?;
    run_device(cfg, signals, |record| {
        daemon::ready::ready(&format!(
            "gnbd_import: ready name={} device={} loop={}",
            record.config.name,
            record.config.link().display(),
            record.loop_device.display()
        ))
    })
}
