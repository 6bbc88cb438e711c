//! What `dlm_tool` does, reachable from tests: each function talks to the daemon through
//! [`DlmClient`] and returns the text to print.

use crate::client::{ClientError, DlmClient};
use crate::mode::{Flags, Mode};
use std::path::Path;

/// `dlm_tool ls`.
pub async fn ls(socket: &Path) -> Result<String, ClientError> {
    DlmClient::connect(socket).await?.list().await
}

/// `dlm_tool lockdump NAME`.
pub async fn lockdump(socket: &Path, name: &str) -> Result<String, ClientError> {
    DlmClient::connect(socket).await?.lockdump(name.as_bytes()).await
}

/// `dlm_tool plocks NAME`: the POSIX byte-range locks this daemon masters in lockspace
/// `NAME` (held ones, then waiting requests marked WAITING).
pub async fn plocks(socket: &Path, name: &str) -> Result<String, ClientError> {
    DlmClient::connect(socket).await?.plock_dump(name.as_bytes()).await
}

/// `dlm_tool join NAME`.
pub async fn join(socket: &Path, name: &str, lvblen: u16) -> Result<String, ClientError> {
    let id = DlmClient::connect(socket).await?.join(name.as_bytes(), lvblen).await?;
    Ok(format!("joined {name} id 0x{id:08x}\n"))
}

/// `dlm_tool leave NAME`.
pub async fn leave(socket: &Path, name: &str) -> Result<String, ClientError> {
    let c = DlmClient::connect(socket).await?;
    let id = c.join(name.as_bytes(), 0).await?;
    c.leave(id).await?;
    Ok(format!("left {name}\n"))
}

/// `dlm_tool lock LS NAME MODE`: take a persistent lock that outlives this process (it
/// becomes an orphan the daemon keeps) and wait for the grant, or fail at once with
/// NOQUEUE.
pub async fn lock(socket: &Path, ls: &str, name: &str, mode: Mode, noqueue: bool) -> Result<String, ClientError> {
    let c = DlmClient::connect(socket).await?;
    let id = c.join(ls.as_bytes(), 0).await?;
    let mut flags = Flags::PERSISTENT;
    if noqueue {
        flags = flags | Flags::NOQUEUE;
    }
    let l = c.lock(id, name.as_bytes(), mode, flags, None).await?;
    Ok(format!("locked {name} {mode} lkid {:016x}\n", l.id()))
}

/// `dlm_tool unlock LS NAME`: adopt the orphan left by `dlm_tool lock` and release it.
pub async fn unlock(socket: &Path, ls: &str, name: &str) -> Result<String, ClientError> {
    let c = DlmClient::connect(socket).await?;
    let id = c.join(ls.as_bytes(), 0).await?;
    for mode in Mode::ALL.into_iter().rev() {
        match c.lock(id, name.as_bytes(), mode, Flags::ORPHAN | Flags::PERSISTENT, None).await {
            Ok(l) => {
                let lkid = l.id();
                l.unlock(Flags::empty(), None).await?;
                return Ok(format!("unlocked {name} {mode} lkid {lkid:016x}\n"));
            }
            Err(ClientError::Status(_)) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(ClientError::Status(crate::mode::Status::NotFound))
}

/// `dlm_tool members EPOCH --members LIST [--failed LIST]`, `dlm_tool fenced NODE`,
/// `dlm_tool quorum yes|no`: feed a membership event to the daemon (the cluster layer's
/// hook; also for tests and manual recovery).
pub async fn member_event(socket: &Path, event: crate::node::MemberEvent) -> Result<String, ClientError> {
    DlmClient::connect(socket).await?.membership(event.clone()).await?;
    Ok(format!("{event:?}\n"))
}
