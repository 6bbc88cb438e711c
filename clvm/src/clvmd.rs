//! clvmd: the per-node daemon that takes cluster-wide locks for the LVM commands
//! (lvmlockd's model, on our DLM). A command connects to clvmd's control socket, asks for
//! the locks it needs, reads and changes the metadata on the shared disks, and releases them
//! (or just exits: a closed connection releases everything it held).
//!
//! Lockspaces and resources (documented in `clvm/docs/locking.md`):
//!
//! | lockspace | resource | what it covers | modes |
//! |---|---|---|---|
//! | `lvm_global` | `GLLK` | the PV/VG namespace | PR to read, EX to change |
//! | `lvm_<VG>` | `VGLK` | the VG's metadata; the value block carries its seqno | PR / EX |
//!
//! Modes: `--single` keeps the locks inside clvmd (one node, no DLM); otherwise they are DLM
//! locks through dlm_controld, and with `--cluster` clvmd also asks fenced for quorum and
//! refuses exclusive locks while the cluster is inquorate.

use daemon::control::{AsyncConn, ControlError, SocketAccess};
use dlm::{DlmClient, Flags, Mode, SbFlags};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// The global lock's lockspace and resource.
pub const GLOBAL_LOCKSPACE: &str = "lvm_global";
pub const GLOBAL_RESOURCE: &str = "GLLK";
/// A VG lock's resource in lockspace `lvm_<VG>`.
pub const VG_RESOURCE: &str = "VGLK";
/// Value block layout: `b"clvm"`, version 1 (u32 LE), seqno (u64 LE).
pub const LVB_MAGIC: &[u8; 4] = b"clvm";
pub const LVB_LEN: usize = 32;

/// A lock mode as commands ask for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LockMode {
    /// Shared (DLM PR): reading metadata.
    Sh,
    /// Exclusive (DLM EX): changing it.
    Ex,
}

/// Requests on clvmd's control socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Mode, quorum, locks held.
    Status,
    /// Take `scope` (`global` or `vg:NAME`) in `mode`, waiting for it unless `nowait`.
    Lock {
        scope: String,
        mode: LockMode,
        #[serde(default)]
        nowait: bool,
    },
    /// Release `scope`; `seqno` (after a change) goes into the VG lock's value block.
    Unlock {
        scope: String,
        #[serde(default)]
        seqno: Option<u64>,
    },
}

/// The reply to `lock`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Granted {
    /// The VG seqno the value block holds (none for the global lock, a value block never
    /// written, or one invalidated by the recovery of a node that held it).
    pub seqno: Option<u64>,
}

/// The reply to `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// `single`, `dlm` or `cluster`.
    pub mode: String,
    /// Whether changes are allowed (always in single and dlm modes).
    pub quorate: bool,
    /// Lock requests in flight or held, all connections.
    pub locks: usize,
}

/// How clvmd locks.
#[derive(Debug, Clone)]
pub enum Backend {
    /// Locks inside clvmd.
    Single,
    /// DLM locks through dlm_controld's socket; `fenced` for quorum (cluster mode).
    Dlm { socket: PathBuf, fenced: Option<PathBuf> },
}

/// clvmd's configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub socket: PathBuf,
    pub backend: Backend,
}

/// The scope a request names, as (lockspace, resource): `global`, `vg:VG`, or `lv:VG/UUID`
/// (an LV's activation lock: resource = the LV's UUID in the VG's lockspace, as lvmlockd).
pub fn parse_scope(scope: &str) -> Result<(String, String), ControlError> {
    if scope == "global" {
        return Ok((GLOBAL_LOCKSPACE.into(), GLOBAL_RESOURCE.into()));
    }
    if let Some(rest) = scope.strip_prefix("lv:") {
        let (vg, uuid) = rest
            .split_once('/')
            .ok_or_else(|| ControlError::bad_request(format!("scope {scope:?}: expected lv:VG/LVUUID")))?;
        let (ls, _) = parse_scope(&format!("vg:{vg}"))?;
        if uuid.is_empty()
            || uuid.len() > dlm::MAX_NAME
            || !uuid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(ControlError::bad_request(format!("scope {scope:?}: {uuid:?} is not an LV UUID")));
        }
        return Ok((ls, uuid.to_owned()));
    }
    let Some(vg) = scope.strip_prefix("vg:") else {
        return Err(ControlError::bad_request(format!("scope {scope:?}: expected global, vg:NAME or lv:VG/LVUUID")));
    };
    crate::ops::check_name("Volume group", vg).map_err(|e| ControlError::bad_request(e.to_string()))?;
    let ls = format!("lvm_{vg}");
    if ls.len() > dlm::MAX_NAME {
        return Err(ControlError::bad_request(format!(
            "VG name {vg} is too long for a DLM lockspace name (at most {} characters)",
            dlm::MAX_NAME - 4
        )));
    }
    Ok((ls, VG_RESOURCE.into()))
}

/// The value block for `seqno`.
pub fn lvb_of(seqno: u64) -> Vec<u8> {
    let mut v = vec![0u8; LVB_LEN];
    v[..4].copy_from_slice(LVB_MAGIC);
    v[4..8].copy_from_slice(&1u32.to_le_bytes());
    v[8..16].copy_from_slice(&seqno.to_le_bytes());
    v
}

/// The seqno in a value block (none when it was never written or is not ours).
pub fn seqno_of(lvb: &[u8]) -> Option<u64> {
    if lvb.len() < 16 || &lvb[..4] != LVB_MAGIC || lvb[4..8] != 1u32.to_le_bytes() {
        return None;
    }
    Some(u64::from_le_bytes(lvb[8..16].try_into().ok()?))
}

/// One held lock of a connection.
enum Held {
    Single(SingleGuard),
    Dlm(dlm::Lock),
}

/// A single-mode lock: held while the guard lives.
enum SingleGuard {
    Read { _guard: tokio::sync::OwnedRwLockReadGuard<()> },
    Write { _guard: tokio::sync::OwnedRwLockWriteGuard<()> },
}

/// Single mode: one resource's lock and the seqno its value block holds.
type SingleEntry = (Arc<tokio::sync::RwLock<()>>, Option<u64>);

struct State {
    backend: Backend,
    dlm: Option<DlmClient>,
    /// Lockspace name → id (DLM).
    lockspaces: tokio::sync::Mutex<HashMap<String, u32>>,
    /// Single mode: resource → its lock and value block.
    single: Mutex<HashMap<String, SingleEntry>>,
    locks: std::sync::atomic::AtomicUsize,
}

impl State {
    fn quorate(&self) -> Result<bool, ControlError> {
        let Backend::Dlm { fenced: Some(f), .. } = &self.backend else { return Ok(true) };
        let mut c = cluster::api::Client::connect(f)
            .map_err(|e| ControlError::unavailable(format!("fenced is not reachable at {}: {e}", f.display())))?;
        let s = c.status().map_err(|e| ControlError::unavailable(format!("fenced status: {e}")))?;
        Ok(s.quorate)
    }

    async fn lockspace(&self, name: &str) -> Result<u32, ControlError> {
        let mut map = self.lockspaces.lock().await;
        if let Some(&id) = map.get(name) {
            return Ok(id);
        }
        let dlm = self.dlm.as_ref().ok_or_else(|| ControlError::failed("no DLM connection"))?;
        let id = dlm
            .join(name.as_bytes(), LVB_LEN as u16)
            .await
            .map_err(|e| ControlError::unavailable(format!("joining DLM lockspace {name}: {e}")))?;
        map.insert(name.to_owned(), id);
        Ok(id)
    }

    /// Takes `scope`; `None` when `gone` (the client closed its connection) completes
    /// first: a request still queued is then cancelled, and released if it was granted
    /// meanwhile, so an abandoned request never leaves a lock behind.
    async fn lock(
        &self,
        scope: &str,
        mode: LockMode,
        nowait: bool,
        gone: impl std::future::Future<Output = ()>,
    ) -> Option<Result<(Held, Option<u64>), ControlError>> {
        let (ls, res) = match parse_scope(scope) {
            Ok(p) => p,
            Err(e) => return Some(Err(e)),
        };
        if mode == LockMode::Ex {
            match self.quorate() {
                Ok(true) => {}
                Ok(false) => {
                    return Some(Err(ControlError::refused(
                        "the cluster is inquorate: metadata changes are refused until quorum returns",
                    )))
                }
                Err(e) => return Some(Err(e)),
            }
        }
        match &self.backend {
            Backend::Single => {
                let key = format!("{ls}/{res}");
                let rw = {
                    let mut m = self.single.lock().expect("single lock table");
                    m.entry(key.clone()).or_insert_with(|| (Arc::new(tokio::sync::RwLock::new(())), None)).0.clone()
                };
                let busy = || ControlError::busy(format!("{scope} is locked by another command"));
                // Dropping a tokio lock future gives up the request: no cleanup needed.
                let guard = match (mode, nowait) {
                    (LockMode::Sh, false) => tokio::select! {
                        g = rw.read_owned() => SingleGuard::Read { _guard: g },
                        _ = gone => return None,
                    },
                    (LockMode::Ex, false) => tokio::select! {
                        g = rw.write_owned() => SingleGuard::Write { _guard: g },
                        _ = gone => return None,
                    },
                    (LockMode::Sh, true) => match rw.try_read_owned() {
                        Ok(g) => SingleGuard::Read { _guard: g },
                        Err(_) => return Some(Err(busy())),
                    },
                    (LockMode::Ex, true) => match rw.try_write_owned() {
                        Ok(g) => SingleGuard::Write { _guard: g },
                        Err(_) => return Some(Err(busy())),
                    },
                };
                let seqno = self.single.lock().expect("single lock table").get(&key).and_then(|e| e.1);
                Some(Ok((Held::Single(guard), seqno)))
            }
            Backend::Dlm { .. } => {
                let id = match self.lockspace(&ls).await {
                    Ok(id) => id,
                    Err(e) => return Some(Err(e)),
                };
                let Some(dlm) = self.dlm.as_ref() else { return Some(Err(ControlError::failed("no DLM connection"))) };
                let m = if mode == LockMode::Ex { Mode::Ex } else { Mode::Pr };
                let mut flags = Flags::VALBLK;
                if nowait {
                    flags = flags.union(Flags::NOQUEUE);
                }
                let unavailable = |e: dlm::ClientError| ControlError::unavailable(format!("DLM lock {ls}/{res}: {e}"));
                let mut lock = match dlm.request(id, res.as_bytes(), m, flags, None).await {
                    Ok(l) => l,
                    Err(e) => return Some(Err(unavailable(e))),
                };
                let done = tokio::select! {
                    r = lock.wait() => Some(r),
                    _ = gone => None,
                };
                match done {
                    Some(Ok(_)) => {
                        let seqno = if lock.sbflags().contains(SbFlags::VALNOTVALID) {
                            None
                        } else {
                            lock.lvb().and_then(seqno_of)
                        };
                        Some(Ok((Held::Dlm(lock), seqno)))
                    }
                    Some(Err(dlm::ClientError::Status(dlm::Status::WouldBlock))) if nowait => {
                        Some(Err(ControlError::busy(format!("{scope} is locked by another node or command"))))
                    }
                    Some(Err(e)) => Some(Err(unavailable(e))),
                    None => {
                        // Abandoned: cancel; if the grant won the race, release it.
                        let _ = lock.cancel().await;
                        if lock.wait().await.is_ok() && lock.mode().is_some() {
                            let _ = lock.unlock(Flags::empty(), None).await;
                        }
                        None
                    }
                }
            }
        }
    }

    async fn unlock(&self, scope: &str, held: Held, seqno: Option<u64>) -> Result<(), ControlError> {
        match held {
            Held::Single(g) => {
                if let (SingleGuard::Write { .. }, Some(s)) = (&g, seqno) {
                    let (ls, res) = parse_scope(scope)?;
                    if let Some(e) = self.single.lock().expect("single lock table").get_mut(&format!("{ls}/{res}")) {
                        e.1 = Some(s);
                    }
                }
                drop(g);
                Ok(())
            }
            Held::Dlm(lock) => {
                let lvb = seqno.filter(|_| lock.mode() == Some(Mode::Ex)).map(lvb_of);
                let flags = if lvb.is_some() { Flags::VALBLK } else { Flags::empty() };
                lock.unlock(flags, lvb.as_deref()).await.map_err(|e| ControlError::failed(format!("DLM unlock: {e}")))
            }
        }
    }
}

/// Runs clvmd until a stop is requested through `signals`; `ready` is called once the
/// socket accepts commands.
pub async fn run(cfg: Config, signals: daemon::Signals, ready: impl FnOnce(&Config)) -> anyhow::Result<()> {
    let dlm = match &cfg.backend {
        Backend::Single => None,
        Backend::Dlm { socket, .. } => Some(DlmClient::connect(socket).await.map_err(|e| {
            anyhow::anyhow!("cannot reach dlm_controld at {}: {e} (start it, or run clvmd --single)", socket.display())
        })?),
    };
    let state = Arc::new(State {
        backend: cfg.backend.clone(),
        dlm,
        lockspaces: tokio::sync::Mutex::new(HashMap::new()),
        single: Mutex::new(HashMap::new()),
        locks: std::sync::atomic::AtomicUsize::new(0),
    });
    if let Backend::Dlm { fenced: Some(_), .. } = &cfg.backend {
        state.quorate().map_err(|e| anyhow::anyhow!("{}", e.message))?;
    }
    if let Some(dir) = cfg.socket.parent() {
        std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("creating {}: {e}", dir.display()))?;
    }
    let std_listener = daemon::control::bind(&cfg.socket, SocketAccess::Owner)
        .map_err(|e| anyhow::anyhow!("control socket {}: {e}", cfg.socket.display()))?;
    std_listener.set_nonblocking(true)?;
    let listener = tokio::net::UnixListener::from_std(std_listener)?;
    ready(&cfg);
    loop {
        tokio::select! {
            _ = signals.stopped() => break,
            acc = listener.accept() => match acc {
                Ok((stream, _)) => {
                    let st = state.clone();
                    tokio::spawn(async move { serve(st, stream).await });
                }
                Err(e) => tracing::warn!("accept: {e}"),
            },
        }
    }
    daemon::ready::stopping();
    let _ = std::fs::remove_file(&cfg.socket);
    Ok(())
}

/// One command's connection: its locks are released when it closes.
async fn serve(state: Arc<State>, stream: tokio::net::UnixStream) {
    let mut conn = AsyncConn::new(stream);
    let mut held: Vec<(String, Held)> = Vec::new();
    loop {
        let req: Request = match conn.next_request().await {
            Ok(Some(r)) => r,
            Ok(None) | Err(_) => break,
        };
        let reply = match req {
            Request::Status => {
                let mode = match &state.backend {
                    Backend::Single => "single",
                    Backend::Dlm { fenced: None, .. } => "dlm",
                    Backend::Dlm { fenced: Some(_), .. } => "cluster",
                };
                match state.quorate() {
                    Ok(q) => {
                        conn.reply(Ok(Status {
                            mode: mode.into(),
                            quorate: q,
                            locks: state.locks.load(std::sync::atomic::Ordering::Relaxed),
                        }))
                        .await
                    }
                    Err(e) => conn.reply::<()>(Err(e)).await,
                }
            }
            Request::Lock { scope, mode, nowait } => {
                if held.iter().any(|(s, _)| *s == scope) {
                    conn.reply::<()>(Err(ControlError::exists(format!("{scope} is already held by this connection"))))
                        .await
                } else {
                    // The client may go away while we wait: then the request is given up.
                    match state.lock(&scope, mode, nowait, conn.closed()).await {
                        None => break,
                        Some(Ok((h, seqno))) => {
                            state.locks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            tracing::debug!("{scope} {mode:?} granted (seqno {seqno:?})");
                            held.push((scope, h));
                            conn.reply(Ok(Granted { seqno })).await
                        }
                        Some(Err(e)) => conn.reply::<()>(Err(e)).await,
                    }
                }
            }
            Request::Unlock { scope, seqno } => match held.iter().position(|(s, _)| *s == scope) {
                None => {
                    conn.reply::<()>(Err(ControlError::not_found(format!("{scope} is not held by this connection"))))
                        .await
                }
                Some(i) => {
                    let (s, h) = held.remove(i);
                    state.locks.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                    let r = state.unlock(&s, h, seqno).await;
                    conn.reply(r.map(|()| serde_json::Value::Null)).await
                }
            },
        };
        if reply.is_err() {
            break;
        }
    }
    for (s, h) in held {
        state.locks.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        if let Err(e) = state.unlock(&s, h, None).await {
            tracing::warn!("releasing {s} of a closed connection: {}", e.message);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_and_value_blocks() {
        assert_eq!(parse_scope("global").unwrap(), ("lvm_global".into(), "GLLK".into()));
        assert_eq!(parse_scope("vg:vg0").unwrap(), ("lvm_vg0".into(), "VGLK".into()));
        assert_eq!(parse_scope("lv:vg0/abc-DEF").unwrap(), ("lvm_vg0".into(), "abc-DEF".into()));
        assert!(parse_scope("lv:vg0/").is_err());
        assert!(parse_scope("lv:vg0").is_err());
        assert!(parse_scope("lv:vg0/a b").is_err());
        assert!(parse_scope("vg:").is_err());
        assert!(parse_scope("vg:a/b").is_err());
        assert!(parse_scope(&format!("vg:{}", "x".repeat(61))).is_err());
        assert_eq!(seqno_of(&lvb_of(42)), Some(42));
        assert_eq!(seqno_of(&[0u8; 32]), None);
        assert_eq!(seqno_of(b"clvm"), None);
    }

    #[test]
    fn requests_decode_strictly() {
        let r: Request = serde_json::from_str(r#"{"op":"lock","scope":"vg:a","mode":"ex"}"#).unwrap();
        assert_eq!(r, Request::Lock { scope: "vg:a".into(), mode: LockMode::Ex, nowait: false });
        assert!(serde_json::from_str::<Request>(r#"{"op":"lock","scope":"vg:a","mode":"ex","x":1}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"op":"lock","scope":"vg:a","mode":"pw"}"#).is_err());
    }
}
