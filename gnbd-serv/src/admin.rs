//! `gnbd_export`: what each verb sends to the server and how its answer is shown.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::control::{call, ClientError, ControlReply, ControlRequest, ExportStatus};
use crate::export::ExportSpec;

/// An administrative action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Create { name: String, path: PathBuf, cached: bool, readonly: bool, description: String, tls: bool },
    Remove { name: String, force: bool },
    List { json: bool },
}

#[derive(Debug, Error)]
pub enum AdminError {
    #[error(transparent)]
    Control(#[from] ClientError),
    #[error("{path}: {why}")]
    BadPath { path: PathBuf, why: String },
    #[error("unexpected reply from gnbd_serv: {0:?}")]
    Unexpected(Box<ControlReply>),
}

/// Performs `action` against the server of `state_dir`; returns what to print.
pub fn run(state_dir: &Path, action: Action) -> Result<String, AdminError> {
    let req = match action {
        Action::Create { name, path, cached, readonly, description, tls } => {
            let path = resolve_device(&path)?;
            ControlRequest::Export { spec: ExportSpec { name, path, cached, readonly, description, tls } }
        }
        Action::Remove { name, force } => ControlRequest::Remove { name, force },
        Action::List { json } => {
            return match call(state_dir, &ControlRequest::List)? {
                ControlReply::Exports { exports } if json => {
                    Ok(serde_json::to_string_pretty(&exports).expect("status serialises") + "\n")
                }
                ControlReply::Exports { exports } => Ok(format_table(&exports)),
                other => Err(AdminError::Unexpected(Box::new(other))),
            };
        }
    };
    match call(state_dir, &req)? {
        ControlReply::Done { message } => Ok(format!("gnbd_export: {message}\n")),
        other => Err(AdminError::Unexpected(Box::new(other))),
    }
}

/// The path to export: as given, or for `VG/LV` (not a path that exists) the activated
/// logical volume `/dev/VG/LV`, as GNBD exported LVs.
pub fn resolve_device(path: &Path) -> Result<PathBuf, AdminError> {
    let abs = crate::export::absolute(path);
    let err = match std::fs::metadata(&abs) {
        Ok(_) => return Ok(abs),
        Err(e) => e,
    };
    let s = path.to_string_lossy();
    let lv_like = path.is_relative()
        && s.split('/').count() == 2
        && s.split('/').all(|p| !p.is_empty() && !p.starts_with('.') && !p.starts_with('-'));
    if lv_like {
        let dev = Path::new("/dev").join(path);
        if std::fs::metadata(&dev).is_ok() {
            return Ok(dev);
        }
        return Err(AdminError::BadPath {
            path: path.to_path_buf(),
            why: format!(
                "no such file, and no logical volume {s} is active on this node (/dev/{s}): activate it with lvchange -ay {s}"
            ),
        });
    }
    Err(AdminError::BadPath { path: abs, why: err.to_string() })
}

/// Sizes the way operators read them: exact bytes are in `--json`.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// The `gnbd_export -l` table: NAME SIZE MODE ACCESS CLIENTS PATH.
pub fn format_table(exports: &[ExportStatus]) -> String {
    let mut rows =
        vec![["NAME".to_string(), "SIZE".into(), "MODE".into(), "ACCESS".into(), "CLIENTS".into(), "PATH".into()]];
    for e in exports {
        let mode = if !e.online {
            "offline".to_string()
        } else if e.cached {
            "cached".into()
        } else if e.direct_io {
            "uncached".into()
        } else {
            "uncached*".into()
        };
        rows.push([
            e.name.clone(),
            if e.online { human_size(e.size) } else { "-".into() },
            mode,
            format!("{}{}", if e.readonly { "ro" } else { "rw" }, if e.tls { ",tls" } else { "" }),
            e.clients.len().to_string(),
            e.path.display().to_string(),
        ]);
    }
    let widths: Vec<usize> = (0..6).map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for r in &rows {
        let mut line = String::new();
        for (i, cell) in r.iter().enumerate() {
            if i == 5 {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}  ", w = widths[i]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    let notes: Vec<&ExportStatus> = exports.iter().filter(|e| !e.online || (!e.cached && !e.direct_io)).collect();
    for e in notes {
        match &e.error {
            Some(err) => {
                let _ = writeln!(out, "# {}: offline: {err}", e.name);
            }
            None => {
                let _ = writeln!(out, "# {}: the filesystem refuses O_DIRECT; served through the page cache", e.name);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_lists_every_export() {
        let e = ExportStatus {
            name: "disk0".into(),
            path: "/srv/disk0.img".into(),
            size: 1 << 30,
            cached: false,
            readonly: true,
            online: true,
            direct_io: true,
            error: None,
            clients: vec!["127.0.0.1:5555".into()],
            tls: false,
            sessions: vec![],
        };
        let t = format_table(&[e]);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("NAME"));
        let cols: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(cols, ["disk0", "1.0", "GiB", "uncached", "ro", "1", "/srv/disk0.img"]);
        assert_eq!(human_size(512), "512 B");
    }
}

#[cfg(test)]
mod resolve_tests {
    use super::*;

    #[test]
    fn lv_names_resolve_to_dev_or_say_how_to_activate() {
        let tmp = std::env::temp_dir().join(format!("resolve-{}", std::process::id()));
        std::fs::write(&tmp, b"x").unwrap();
        assert_eq!(resolve_device(&tmp).unwrap(), tmp);
        let e = resolve_device(Path::new("novg-xyz/nolv")).unwrap_err().to_string();
        assert!(e.contains("lvchange -ay novg-xyz/nolv"), "{e}");
        let e = resolve_device(Path::new("/nonexistent/file")).unwrap_err().to_string();
        assert!(!e.contains("lvchange"), "{e}");
        let _ = std::fs::remove_file(&tmp);
    }
}
