//! The service records in the DLM: lockspace `rgmanager`, one resource `rg:NAME` per
//! service whose value block holds its [`Record`], and one resource `node:ID` per node that
//! its rgmanager holds EX while it takes services (the others probe it with NOQUEUE).
//!
//! Every rgmanager holds an NL lock on every `rg:` resource for as long as it runs, so the
//! resources (and their value blocks) live as long as one rgmanager does. A record is read
//! by converting NL→CR (which reads the value block) and back; it is changed by converting
//! NL→EX, reading, and converting EX→NL with the new value (which writes it). No resource
//! agent runs while an EX is held.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dlm::{ClientError, DlmClient, Flags, Lock, Mode, SbFlags, Status};
use tokio::runtime::Runtime;
use tracing::warn;

use crate::record::{Record, RECORD_LEN};

/// The lockspace.
pub const LOCKSPACE: &[u8] = b"rgmanager";
/// Value block length of the lockspace.
pub const LVB_LEN: usize = 64;

/// The DLM side of the daemon.
pub struct Store {
    rt: Runtime,
    client: DlmClient,
    ls: u32,
    locks: BTreeMap<String, Lock>,
    alive: Option<Lock>,
    quorate: Arc<AtomicBool>,
    poisoned: AtomicBool,
}

/// Runs a DLM call, giving up when the node loses quorum meanwhile (the DLM then waits for
/// a recovery that cannot happen); the store is then poisoned and must be reconnected.
fn guarded<T>(
    rt: &Runtime,
    quorate: &AtomicBool,
    poisoned: &AtomicBool,
    fut: impl Future<Output = Result<T, ClientError>>,
) -> Result<T, ClientError> {
    rt.block_on(async {
        tokio::select! {
            r = fut => r,
            _ = async {
                while quorate.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            } => {
                poisoned.store(true, Ordering::Relaxed);
                Err(ClientError::Io(std::io::Error::other("quorum lost while waiting for the DLM")))
            }
        }
    })
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("ls", &self.ls).field("services", &self.locks.len()).finish()
    }
}

fn lvb_of(r: &Record) -> Vec<u8> {
    let mut v = vec![0u8; LVB_LEN];
    v[..RECORD_LEN].copy_from_slice(&r.encode());
    v
}

fn decode(name: &str, lvb: Option<&[u8]>, sb: SbFlags) -> Option<Record> {
    let b = lvb?;
    if sb.contains(SbFlags::VALNOTVALID) {
        // The last EX holder died before writing. Records are never changed while resources
        // run, so the last value written is still the truth.
        tracing::debug!(service = name, "value block flagged not valid; using its last value");
    }
    match Record::decode(b) {
        Ok(r) => r,
        Err(e) => {
            warn!(service = name, error = %e, "unreadable service record; treating it as new");
            None
        }
    }
}

impl Store {
    /// Connects to dlm_controld at `socket` and joins the lockspace. `quorate` is this
    /// node's quorum as fenced reports it: calls give up when it goes false.
    pub fn connect(socket: &Path, quorate: Arc<AtomicBool>) -> Result<Store, ClientError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(ClientError::Io)?;
        let poisoned = AtomicBool::new(false);
        let (client, ls) = guarded(&rt, &quorate, &poisoned, async {
            let c = DlmClient::connect(socket).await?;
            let ls = c.join(LOCKSPACE, LVB_LEN as u16).await?;
            Ok::<_, ClientError>((c, ls))
        })?;
        Ok(Store { rt, client, ls, locks: BTreeMap::new(), alive: None, quorate, poisoned })
    }

    /// A call was abandoned when quorum was lost: reconnect before using the DLM again.
    pub fn poisoned(&self) -> bool {
        self.poisoned.load(Ordering::Relaxed)
    }

    fn ensure(&mut self, name: &str) -> Result<(), ClientError> {
        if !self.locks.contains_key(name) {
            let key = format!("rg:{name}");
            let l = guarded(
                &self.rt,
                &self.quorate,
                &self.poisoned,
                self.client.lock(self.ls, key.as_bytes(), Mode::Nl, Flags::VALBLK, None),
            )?;
            self.locks.insert(name.to_owned(), l);
        }
        Ok(())
    }

    /// Reads service `name`'s record (None: never written).
    pub fn read(&mut self, name: &str) -> Result<Option<Record>, ClientError> {
        self.ensure(name)?;
        let l = self.locks.get_mut(name).expect("ensured");
        let c = guarded(&self.rt, &self.quorate, &self.poisoned, l.convert(Mode::Cr, Flags::VALBLK, None))?;
        let r = decode(name, c.lvb.as_deref().or(l.lvb()), c.sbflags);
        // VALBLK stays on: DLM recovery rebuilds a lost master's value block from the copies
        // in the survivors' VALBLK locks.
        guarded(&self.rt, &self.quorate, &self.poisoned, l.convert(Mode::Nl, Flags::VALBLK, None))?;
        Ok(r)
    }

    /// Changes service `name`'s record under EX: `f` gets the current record and returns the
    /// new one (None: leave it). Returns what was written.
    pub fn transact(
        &mut self,
        name: &str,
        f: impl FnOnce(Option<Record>) -> Option<Record>,
    ) -> Result<Option<Record>, ClientError> {
        self.ensure(name)?;
        let l = self.locks.get_mut(name).expect("ensured");
        let c = guarded(&self.rt, &self.quorate, &self.poisoned, l.convert(Mode::Ex, Flags::VALBLK, None))?;
        let cur = decode(name, c.lvb.as_deref().or(l.lvb()), c.sbflags);
        let new = f(cur);
        match &new {
            Some(r) => {
                let v = lvb_of(r);
                guarded(&self.rt, &self.quorate, &self.poisoned, l.convert(Mode::Nl, Flags::VALBLK, Some(&v)))?;
            }
            None => {
                // Writes back the value just read (VALBLK stays on; see `read`).
                guarded(&self.rt, &self.quorate, &self.poisoned, l.convert(Mode::Nl, Flags::VALBLK, None))?;
            }
        }
        Ok(new)
    }

    /// Takes this node's `node:ID` lock if it is free (true once held): from then on the
    /// others see rgmanager here. It is not waited for: a previous rgmanager of this node
    /// may still hold it until the DLM has recovered from that node's death.
    pub fn announce(&mut self, me: u32) -> Result<bool, ClientError> {
        if self.alive.is_none() {
            let key = format!("node:{me}");
            match guarded(
                &self.rt,
                &self.quorate,
                &self.poisoned,
                self.client.lock(self.ls, key.as_bytes(), Mode::Ex, Flags::NOQUEUE, None),
            ) {
                Ok(l) => self.alive = Some(l),
                Err(ClientError::Status(Status::WouldBlock)) => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Whether this node's presence lock is held.
    pub fn announced(&self) -> bool {
        self.alive.is_some()
    }

    /// Releases it: the others stop placing services here.
    pub fn withdraw(&mut self) -> Result<(), ClientError> {
        if let Some(l) = self.alive.take() {
            guarded(&self.rt, &self.quorate, &self.poisoned, l.unlock(Flags::empty(), None))?;
        }
        Ok(())
    }

    /// Whether node `id` runs rgmanager (holds its `node:ID` lock).
    pub fn probe(&mut self, id: u32) -> Result<bool, ClientError> {
        let key = format!("node:{id}");
        let r = guarded(
            &self.rt,
            &self.quorate,
            &self.poisoned,
            self.client.lock(self.ls, key.as_bytes(), Mode::Pr, Flags::NOQUEUE, None),
        );
        match r {
            Ok(l) => {
                guarded(&self.rt, &self.quorate, &self.poisoned, l.unlock(Flags::empty(), None))?;
                Ok(false)
            }
            Err(ClientError::Status(Status::WouldBlock)) => Ok(true),
            Err(e) => Err(e),
        }
    }
}
