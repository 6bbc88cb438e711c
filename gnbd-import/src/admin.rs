//! The `gnbd_import` verbs, apart from argument parsing.

use crate::{check_free, list, remove, ConnectOptions, DeviceConfig, ImportError, Record};
use gnbd_client::{list_exports_with, ClientError};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Default NBD port.
pub const DEFAULT_PORT: u16 = 10809;

/// `host`, `host:port`, `[v6]`, `[v6]:port`, `unix:PATH` or a path: the address the client
/// dials (`port` added when none is given).
pub fn server_addr(server: &str, port: u16) -> Result<String, String> {
    if server.starts_with("unix:") || server.contains('/') {
        return Ok(server.to_string());
    }
    gnbd_net::addr::with_default_port(server, port).map_err(|e| e.to_string())
}

/// What `gnbd_import` was asked to do.
#[derive(Debug, Clone)]
pub enum Action {
    /// `-e SERVER`
    ListExports { server: String },
    /// `-i SERVER [-n NAME]`
    Import { server: String, name: Option<String>, timeout_secs: u64, connections: usize, read_only: bool },
    /// `-l`
    List { json: bool },
    /// `-r NAME` / `-R`
    Remove { name: Option<String>, force: bool },
    /// `-s NODE -t SERVER` (fence), `-u NODE -t SERVER` (unfence), `-c SERVER` (bans)
    /// Orders are signed with `key`, or sent over TLS with the certificates in `tls_dir`.
    Fence { action: &'static str, node: Option<String>, server: String, key: PathBuf, tls_dir: Option<PathBuf> },
}

/// Where `gnbd_import` keeps its state and device names, and how to reach servers.
#[derive(Debug, Clone)]
pub struct Env {
    pub state_dir: PathBuf,
    pub dev_dir: PathBuf,
    pub port: u16,
    /// The program to run as a device process (normally `gnbd_import` itself).
    pub exe: PathBuf,
    /// TLS and source address for every connection.
    pub connect: ConnectOptions,
    /// `--log-level` for the device processes started (`None`: theirs is `info`, or
    /// `RUST_LOG`).
    pub log_level: Option<String>,
}

/// Runs `action`, writing what it has to say to `out` as it goes (so an import of several
/// exports reports the ones that worked even when another fails). The error is one line.
pub fn run(env: &Env, action: Action, out: &mut dyn Write) -> anyhow::Result<()> {
    let text = match action {
        Action::ListExports { server } => list_server(env, &server)?,
        Action::Import { server, name, timeout_secs, connections, read_only } => {
            return import(env, &server, name, timeout_secs, connections, read_only, out)
        }
        Action::List { json } => show(env, json)?,
        Action::Remove { name, force } => return remove_some(env, name, force, out),
        Action::Fence { action, node, server, key, tls_dir } => fence(action, node, &server, &key, tls_dir.as_deref())?,
    };
    write!(out, "{text}")?;
    Ok(())
}

/// The error of a verb run on several names: the one failure, or all of them on one line.
fn failed(what: &str, total: usize, mut failures: Vec<String>) -> anyhow::Result<()> {
    match failures.len() {
        0 => Ok(()),
        1 => Err(anyhow::anyhow!(failures.remove(0))),
        n => Err(anyhow::anyhow!("{n} of {total} {what} failed: {}", failures.join("; "))),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    use anyhow::Context;
    tokio::runtime::Builder::new_current_thread().enable_all().build().context("cannot start the I/O runtime")
}

fn exports_of(env: &Env, server: &str) -> anyhow::Result<Vec<nbd_proto::ServerEntry>> {
    let addr = server_addr(server, env.port).map_err(anyhow::Error::msg)?;
    let mut opts = env.connect.client_options(&addr, "");
    opts.connect_timeout = Duration::from_secs(10);
    runtime()?.block_on(list_exports_with(&opts)).map_err(|e| match e {
        ClientError::Io(_) | ClientError::TimedOut(_) => anyhow::anyhow!("cannot reach {server} ({addr}): {e}"),
        e => anyhow::anyhow!("{server}: {e}"),
    })
}

fn list_server(env: &Env, server: &str) -> anyhow::Result<String> {
    let mut out = String::new();
    for e in exports_of(env, server)? {
        if e.description.is_empty() {
            out.push_str(&format!("{}\n", e.name));
        } else {
            out.push_str(&format!("{}\t{}\n", e.name, e.description));
        }
    }
    Ok(out)
}

fn import(
    env: &Env,
    server: &str,
    name: Option<String>,
    timeout_secs: u64,
    connections: usize,
    read_only: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let names = match name {
        Some(n) => vec![n],
        None => {
            let all: Vec<String> = exports_of(env, server)?.into_iter().map(|e| e.name).collect();
            if all.is_empty() {
                anyhow::bail!("{server} offers no exports");
            }
            all
        }
    };
    let addr = server_addr(server, env.port).map_err(anyhow::Error::msg)?;
    let total = names.len();
    let mut failures = vec![];
    for export in names {
        let cfg = DeviceConfig {
            name: export.clone(),
            server: server.to_string(),
            addr: addr.clone(),
            export: export.clone(),
            timeout_secs,
            connections,
            read_only,
            state_dir: env.state_dir.clone(),
            dev_dir: env.dev_dir.clone(),
            connect: env.connect.clone(),
        };
        match start_device(&env.exe, &cfg, env.log_level.as_deref()) {
            Ok(r) => writeln!(
                out,
                "gnbd_import: imported '{}' from {} as {} ({}, {} bytes)",
                export,
                server,
                cfg.link().display(),
                r.loop_device.display(),
                r.size
            )?,
            Err(e) => failures.push(e.to_string()),
        }
    }
    failed("imports", total, failures)
}

/// Starts the device process for `cfg` and returns its record once the device is ready.
///
/// `exe --run-device CONFIG` daemonises the `daemon::background` way: it starts itself
/// again in the background (log: `cfg.log_path()`), waits for the ready line or the error,
/// and exits 0 or 1 with the error on stderr. Device set-up is bounded (the connection by
/// the client's connect timeout, the rest is local), so this waits for it.
pub fn start_device(exe: &Path, cfg: &DeviceConfig, log_level: Option<&str>) -> Result<Record, ImportError> {
    check_free(&cfg.state_dir, &cfg.name)?;
    let dir = cfg.record_path().parent().expect("records live in a directory").to_path_buf();
    std::fs::create_dir_all(&dir).map_err(|source| ImportError::Io { what: "cannot create", path: dir, source })?;
    let json = serde_json::to_string(cfg).expect("configs serialise");
    let mut cmd = Command::new(exe);
    cmd.arg("--run-device").arg(json);
    if let Some(level) = log_level {
        cmd.arg("--log-level").arg(level);
    }
    crate::device::start_process(&mut cmd, "gnbd_import", &cfg.record_path(), &cfg.log_path())
        .map_err(|message| ImportError::Device { name: cfg.name.clone(), message })
}

fn show(env: &Env, json: bool) -> anyhow::Result<String> {
    let devices = list(&env.state_dir)?;
    if json {
        let v: Vec<serde_json::Value> = devices
            .iter()
            .map(|d| {
                serde_json::json!({
                    "name": d.record.config.name,
                    "state": d.state(),
                    "device": d.record.config.link(),
                    "loop_device": d.record.loop_device,
                    "server": d.record.config.server,
                    "export": d.record.config.export,
                    "size": d.record.size,
                    "pid": d.record.pid,
                    "timeout_secs": d.record.config.timeout_secs,
                    "status": d.status,
                })
            })
            .collect();
        return Ok(format!("{}\n", serde_json::to_string_pretty(&v).expect("json")));
    }
    let mut out = String::new();
    if devices.is_empty() {
        return Ok(out);
    }
    out.push_str(&format!(
        "{:<16} {:<13} {:<22} {:<12} {:>14}  {}\n",
        "NAME", "STATE", "DEVICE", "LOOP", "SIZE", "SERVER/EXPORT"
    ));
    for d in &devices {
        let c = &d.record.config;
        out.push_str(&format!(
            "{:<16} {:<13} {:<22} {:<12} {:>14}  {}/{}\n",
            c.name,
            d.state(),
            c.link().display(),
            d.record.loop_device.display(),
            d.record.size,
            c.server,
            c.export
        ));
    }
    Ok(out)
}

fn remove_some(env: &Env, name: Option<String>, force: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    let names = match name {
        Some(n) => vec![n],
        None => list(&env.state_dir)?.into_iter().map(|d| d.record.config.name).collect(),
    };
    let total = names.len();
    let mut failures = vec![];
    for n in names {
        match remove(&env.state_dir, &n, force) {
            Ok(()) => writeln!(out, "gnbd_import: removed '{n}'")?,
            Err(e) => failures.push(e.to_string()),
        }
    }
    failed("removals", total, failures)
}

fn fence(action: &str, node: Option<String>, server: &str, key: &Path, tls: Option<&Path>) -> anyhow::Result<String> {
    // The fence agent's own logic, so gnbd_import and fence_gnbd can never disagree.
    let mut text = format!("action={action}\nservers={server}\ncluster_key={}\n", key.display());
    if let Some(dir) = tls {
        text.push_str(&format!("tls_certificates={}\n", dir.display()));
    }
    if let Some(n) = &node {
        text.push_str(&format!("nodename={n}\n"));
    }
    let args = gnbd_fence::agent::parse(&text).map_err(|e| anyhow::anyhow!("bad fence request: {e}"))?;
    let out = gnbd_fence::agent::run(&args);
    if out.code != 0 {
        // The agent's lines, `fence_gnbd: why`, as one error.
        let why: Vec<&str> =
            out.stderr.lines().map(|l| l.strip_prefix("fence_gnbd: ").unwrap_or(l)).filter(|l| !l.is_empty()).collect();
        anyhow::bail!("{}", why.join("; "));
    }
    Ok(match action {
        "list" => out.stdout.lines().filter_map(|l| l.split(',').next()).map(|n| format!("{n}\n")).collect(),
        _ => out.stderr.replace("fence_gnbd: ", "gnbd_import: "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_addresses_get_the_port() {
        assert_eq!(server_addr("srv", 10809).unwrap(), "srv:10809");
        assert_eq!(server_addr("srv:7000", 10809).unwrap(), "srv:7000");
        assert_eq!(server_addr("::1", 5).unwrap(), "[::1]:5");
        assert_eq!(server_addr("[::1]", 5).unwrap(), "[::1]:5");
        assert_eq!(server_addr("[::1]:6", 5).unwrap(), "[::1]:6");
        assert_eq!(server_addr("unix:/run/x.sock", 5).unwrap(), "unix:/run/x.sock");
        assert_eq!(server_addr("/run/x.sock", 5).unwrap(), "/run/x.sock");
        assert!(server_addr("srv:notaport", 5).is_err());
    }
}
