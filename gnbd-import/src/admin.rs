//! The `gnbd_import` verbs, apart from argument parsing.

use crate::{check_free, list, remove, ConnectOptions, DeviceConfig, ImportError, Record};
use gnbd_client::{list_exports_with, ClientError};
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Default NBD port.
pub const DEFAULT_PORT: u16 = 10809;
/// How long `-i` waits for a device process to report its device.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

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
}

/// Runs `action`; returns what to print on stdout, or an error message.
pub fn run(env: &Env, action: Action) -> Result<String, String> {
    match action {
        Action::ListExports { server } => list_server(env, &server),
        Action::Import { server, name, timeout_secs, connections, read_only } => {
            import(env, &server, name, timeout_secs, connections, read_only)
        }
        Action::List { json } => show(env, json),
        Action::Remove { name, force } => remove_some(env, name, force),
        Action::Fence { action, node, server, key, tls_dir } => fence(action, node, &server, &key, tls_dir.as_deref()),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| format!("cannot start: {e}"))
}

fn exports_of(env: &Env, server: &str) -> Result<Vec<nbd_proto::ServerEntry>, String> {
    let addr = server_addr(server, env.port)?;
    let mut opts = env.connect.client_options(&addr, "");
    opts.connect_timeout = Duration::from_secs(10);
    runtime()?.block_on(list_exports_with(&opts)).map_err(|e| match e {
        ClientError::Io(_) | ClientError::TimedOut(_) => format!("cannot reach {server} ({addr}): {e}"),
        e => format!("{server}: {e}"),
    })
}

fn list_server(env: &Env, server: &str) -> Result<String, String> {
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
) -> Result<String, String> {
    let names = match name {
        Some(n) => vec![n],
        None => {
            let all: Vec<String> = exports_of(env, server)?.into_iter().map(|e| e.name).collect();
            if all.is_empty() {
                return Err(format!("{server} offers no exports"));
            }
            all
        }
    };
    let mut out = String::new();
    let mut failures = vec![];
    for export in names {
        let cfg = DeviceConfig {
            name: export.clone(),
            server: server.to_string(),
            addr: server_addr(server, env.port)?,
            export: export.clone(),
            timeout_secs,
            connections,
            read_only,
            state_dir: env.state_dir.clone(),
            dev_dir: env.dev_dir.clone(),
            connect: env.connect.clone(),
        };
        match start_device(&env.exe, &cfg) {
            Ok(r) => out.push_str(&format!(
                "gnbd_import: imported '{}' from {} as {} ({}, {} bytes)\n",
                export,
                server,
                cfg.link().display(),
                r.loop_device.display(),
                r.size
            )),
            Err(e) => failures.push(e.to_string()),
        }
    }
    if failures.is_empty() {
        Ok(out)
    } else {
        Err(format!("{out}{}", failures.join("\n")))
    }
}

/// Starts the device process for `cfg` and waits (bounded) until it reports its device.
pub fn start_device(exe: &Path, cfg: &DeviceConfig) -> Result<Record, ImportError> {
    check_free(&cfg.state_dir, &cfg.name)?;
    let dir = cfg.record_path().parent().expect("records live in a directory").to_path_buf();
    std::fs::create_dir_all(&dir).map_err(|source| ImportError::Io { what: "cannot create", path: dir, source })?;
    let log_path = cfg.log_path();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|source| ImportError::Io { what: "cannot open the log", path: log_path.clone(), source })?;
    let json = serde_json::to_string(cfg).expect("configs serialise");
    let mut child = Command::new(exe)
        .arg("--run-device")
        .arg(json)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .env("NO_COLOR", "1")
        // A daemon must not pin the directory gnbd_import was started from.
        .current_dir("/")
        // Its own process group: a Ctrl-C at the terminal that ran gnbd_import leaves it be.
        .process_group(0)
        .spawn()
        .map_err(|source| ImportError::Io { what: "cannot run", path: exe.to_path_buf(), source })?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let fail = |message: String| ImportError::Device { name: cfg.name.clone(), message };
    match rx.recv_timeout(START_TIMEOUT) {
        Ok(line) if line.starts_with("ready ") => {
            // Reap it later from init: the process outlives us on purpose.
            drop(child);
            let text = std::fs::read_to_string(cfg.record_path()).map_err(|e| fail(e.to_string()))?;
            serde_json::from_str(&text).map_err(|e| fail(e.to_string()))
        }
        Ok(_) => {
            let _ = child.wait();
            Err(fail(log_tail(&log_path)))
        }
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(fail(format!("no device after {START_TIMEOUT:?}; {}", log_tail(&log_path))))
        }
    }
}

/// The last error lines of a device log, for messages.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = lines[lines.len().saturating_sub(3)..].join("\n");
    if tail.is_empty() {
        format!("it exited without a message (log: {})", path.display())
    } else {
        format!("{tail}\n(log: {})", path.display())
    }
}

fn show(env: &Env, json: bool) -> Result<String, String> {
    let devices = list(&env.state_dir).map_err(|e| e.to_string())?;
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

fn remove_some(env: &Env, name: Option<String>, force: bool) -> Result<String, String> {
    let names = match name {
        Some(n) => vec![n],
        None => list(&env.state_dir).map_err(|e| e.to_string())?.into_iter().map(|d| d.record.config.name).collect(),
    };
    let mut out = String::new();
    let mut errors = vec![];
    for n in names {
        match remove(&env.state_dir, &n, force) {
            Ok(()) => out.push_str(&format!("gnbd_import: removed '{n}'\n")),
            Err(e) => errors.push(e.to_string()),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(format!("{out}{}", errors.join("\n")))
    }
}

fn fence(action: &str, node: Option<String>, server: &str, key: &Path, tls: Option<&Path>) -> Result<String, String> {
    // The fence agent's own logic, so gnbd_import and fence_gnbd can never disagree.
    let mut text = format!("action={action}\nservers={server}\ncluster_key={}\n", key.display());
    if let Some(dir) = tls {
        text.push_str(&format!("tls_certificates={}\n", dir.display()));
    }
    if let Some(n) = &node {
        text.push_str(&format!("nodename={n}\n"));
    }
    let args = gnbd_fence::agent::parse(&text).map_err(|e| format!("bad fence request: {e}"))?;
    let out = gnbd_fence::agent::run(&args);
    let said = out.stderr.replace("fence_gnbd: ", "gnbd_import: ");
    if out.code != 0 {
        return Err(said.trim_end().to_string());
    }
    Ok(match action {
        "list" => out.stdout.lines().filter_map(|l| l.split(',').next()).map(|n| format!("{n}\n")).collect(),
        _ => said,
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
