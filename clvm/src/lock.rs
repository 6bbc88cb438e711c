//! Command locking. Every command takes the global lock (the PV/VG namespace: pvcreate,
//! vgcreate, vgremove, vgrename, vgextend, vgreduce) and the VG lock of each VG it reads
//! (shared) or changes (exclusive), then reads the metadata from the disks.
//!
//! - A local VG (no `CLUSTERED` flag) is locked on this host only: `flock` on
//!   `/run/lock/lvm/P_global` and `/run/lock/lvm/V_<VG>`, the files LVM2's file locking uses,
//!   so clvm and stock lvm2 commands on one host exclude each other.
//! - A clustered VG is locked cluster-wide through clvmd (`clvm/docs/locking.md`); without a
//!   running clvmd a change to a clustered VG is refused.

use std::fs::File;
use std::path::{Path, PathBuf};

/// clvmd's control socket.
pub const DEFAULT_SOCKET: &str = "/run/clvmd/clvmd.sock";
/// Where local lock files live (LVM2's default `global/locking_dir`).
pub const DEFAULT_LOCK_DIR: &str = "/run/lock/lvm";

/// What a lock covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// The PV/VG namespace.
    Global,
    /// One VG's metadata.
    Vg(String),
    /// An LV's activation: (VG name, LV UUID).
    Lv(String, String),
}

impl Scope {
    /// The lock file name LVM2 uses.
    pub fn file_name(&self) -> String {
        match self {
            Scope::Global => "P_global".into(),
            Scope::Vg(v) => format!("V_{v}"),
            Scope::Lv(_, uuid) => format!("A_{uuid}"),
        }
    }
}

/// A held lock; dropping it releases it.
#[derive(Debug)]
pub struct Held {
    _file: Option<File>,
    pub scope: Scope,
}

/// Why a lock was not taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("cannot lock {path}: {source}")]
    File { path: String, source: std::io::Error },
    #[error("{0}")]
    Refused(String),
}

/// Local locks under `dir` (waits for a conflicting holder, as LVM2 does).
pub fn lock_local(dir: &Path, scope: Scope, exclusive: bool) -> Result<Held, LockError> {
    let path: PathBuf = dir.join(scope.file_name());
    let err = |source| LockError::File { path: path.display().to_string(), source };
    if let Err(e) = std::fs::create_dir_all(dir) {
        return Err(err(e));
    }
    let f = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(err)?;
    if exclusive {
        f.lock().map_err(err)?;
    } else {
        f.lock_shared().map_err(err)?;
    }
    Ok(Held { _file: Some(f), scope })
}

/// A lock that holds nothing (`--nolocking`).
pub fn none(scope: Scope) -> Held {
    Held { _file: None, scope }
}

/// A command's session with clvmd: the locks it takes live as long as the connection.
#[derive(Debug)]
pub struct ClvmdSession {
    client: daemon::control::Client,
    /// clvmd's mode: `single`, `dlm` or `cluster`.
    pub mode: String,
    /// Whether the cluster is quorate (always true outside cluster mode).
    pub quorate: bool,
}

impl ClvmdSession {
    /// Connects to clvmd; `Ok(None)` when no clvmd listens at `path`.
    pub fn connect(path: &Path) -> Result<Option<ClvmdSession>, LockError> {
        if !path.exists() {
            return Ok(None);
        }
        let mut client = match daemon::control::Client::connect("clvmd", path) {
            Ok(c) => c,
            Err(daemon::control::CallError::Connect { .. }) => return Ok(None),
            Err(e) => return Err(LockError::Refused(format!("clvmd at {}: {e}", path.display()))),
        };
        let st: crate::clvmd::Status = client
            .call(&crate::clvmd::Request::Status)
            .map_err(|e| LockError::Refused(format!("clvmd at {}: {e}", path.display())))?;
        Ok(Some(ClvmdSession { client, mode: st.mode, quorate: st.quorate }))
    }

    fn scope_name(scope: &Scope) -> String {
        match scope {
            Scope::Global => "global".into(),
            Scope::Vg(v) => format!("vg:{v}"),
            Scope::Lv(v, uuid) => format!("lv:{v}/{uuid}"),
        }
    }

    /// Takes `scope`, waiting for it; returns the VG seqno its value block holds, if any.
    pub fn lock(&mut self, scope: &Scope, exclusive: bool) -> Result<Option<u64>, LockError> {
        self.lock_with(scope, exclusive, false)
    }

    /// As [`ClvmdSession::lock`]; with `nowait`, refused at once when another holder has it.
    pub fn lock_with(&mut self, scope: &Scope, exclusive: bool, nowait: bool) -> Result<Option<u64>, LockError> {
        let mode = if exclusive { crate::clvmd::LockMode::Ex } else { crate::clvmd::LockMode::Sh };
        let req = crate::clvmd::Request::Lock { scope: Self::scope_name(scope), mode, nowait };
        let g: crate::clvmd::Granted = self.client.call(&req).map_err(|e| match e.remote() {
            Some(r) => LockError::Refused(format!("{}: {}", Self::scope_name(scope), r.message)),
            None => LockError::Refused(format!("clvmd: {e}")),
        })?;
        Ok(g.seqno)
    }

    /// Releases `scope`, leaving `seqno` in a VG lock's value block.
    pub fn unlock(&mut self, scope: &Scope, seqno: Option<u64>) -> Result<(), LockError> {
        let req = crate::clvmd::Request::Unlock { scope: Self::scope_name(scope), seqno };
        self.client
            .call::<_, serde_json::Value>(&req)
            .map(|_| ())
            .map_err(|e| LockError::Refused(format!("clvmd: {e}")))
    }
}
