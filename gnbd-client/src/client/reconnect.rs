//! Reconnection with resubmission: a slot's manager runs its session, and when the
//! connection is lost puts every request without a reply back at the front of the queue and
//! reconnects with exponential back-off, until closed or refused for good.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::{timeout, Instant};
use tracing::{debug, error, info, warn};

use crate::conn::Conn;
use crate::error::ClientError;

use super::options::ClientOptions;
use super::session::{open, Session};
use super::slot::{join, reader, writer, End, Slot};

/// How long a closing connection waits for the replies of requests still in flight.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Runs one slot: the given session, then reconnect after reconnect until closed.
pub(super) async fn manage(slot: Arc<Slot>, opts: Arc<ClientOptions>, first: Session) {
    let io_timeout = opts.timeout();
    let mut session = Some(first);
    let mut backoff = opts.reconnect_min;
    loop {
        let s = match session.take() {
            Some(s) => s,
            None => match reconnect(&slot, &opts, &mut backoff).await {
                Some(s) => s,
                None => return,
            },
        };
        if s.neg.size != slot.size || s.neg.flags != slot.flags {
            warn!(
                slot = slot.id,
                size = s.neg.size,
                was = slot.size,
                flags = s.neg.flags,
                was_flags = slot.flags,
                "the export changed size or flags across a reconnect; requests keep the first limits"
            );
        }
        slot.lock().conn = Some(Conn::new(s.neg.mode));
        let mut wt = tokio::spawn(writer(slot.clone(), s.w));
        let mut rt = tokio::spawn(reader(slot.clone(), s.r, io_timeout));
        // A JoinHandle must not be polled again once it has returned.
        let (end, mut wt_done, mut rt_done) = tokio::select! {
            e = join(&mut wt) => (e, true, false),
            e = join(&mut rt) => (e, false, true),
        };
        if matches!(end, End::Disconnected) && !rt_done {
            // Let the replies of requests still in flight arrive until the server closes.
            if let Ok(e) = timeout(CLOSE_GRACE, join(&mut rt)).await {
                debug!(slot = slot.id, end = ?e, "connection closed after NBD_CMD_DISC");
                rt_done = true;
            }
        }
        for (h, done) in [(&mut wt, &mut wt_done), (&mut rt, &mut rt_done)] {
            if !*done {
                h.abort();
                let _ = h.await;
                *done = true;
            }
        }
        let tags = slot.lock().conn.take().map(Conn::into_tags).unwrap_or_default();
        let closing = slot.lock().closing;
        match &end {
            End::Protocol(msg) => {
                error!(slot = slot.id, error = %msg, in_flight = tags.len(), "protocol violation; dropping the connection");
                for p in tags {
                    let _ = p.tx.send(Err(ClientError::Protocol(msg.clone())));
                }
            }
            _ if closing => {
                for p in tags {
                    let _ = p.tx.send(Err(ClientError::Closed));
                }
            }
            _ => {
                let reason = match &end {
                    End::Lost(e) => e.to_string(),
                    End::Stalled => "no reply within the I/O timeout".to_string(),
                    _ => format!("{end:?}"),
                };
                warn!(slot = slot.id, %reason, resubmit = tags.len(), "connection lost; reconnecting");
                // A lost connection gives the server a whole timeout to come back. After a
                // stall, requests keep their age: those that waited a whole timeout fail before
                // the next connection attempt, younger ones are resubmitted.
                let stalled = matches!(end, End::Stalled);
                let now = Instant::now();
                let mut st = slot.lock();
                st.resubmitted += tags.len() as u64;
                for mut p in tags.into_iter().rev() {
                    if !stalled {
                        p.since = now;
                    }
                    st.queue.push_front(p);
                }
            }
        }
        if closing {
            slot.fail_queue(&ClientError::Closed);
            return;
        }
    }
}

/// Reconnects with back-off; `None` when the slot is closing or the server said no for good.
pub(super) async fn reconnect(slot: &Slot, opts: &ClientOptions, backoff: &mut Duration) -> Option<Session> {
    let io_timeout = opts.timeout();
    loop {
        if slot.lock().closing {
            slot.fail_queue(&ClientError::Closed);
            return None;
        }
        slot.expire(io_timeout);
        let attempt = tokio::select! {
            r = open(opts) => Some(r),
            _ = slot.expire_loop(io_timeout) => None,
        };
        match attempt {
            None => continue,
            Some(Ok(s)) => {
                info!(slot = slot.id, addr = %opts.addr, export = %opts.export, "reconnected");
                slot.lock().reconnects += 1;
                *backoff = opts.reconnect_min;
                return Some(s);
            }
            Some(Err(e)) if e.is_permanent() => {
                error!(slot = slot.id, error = %e, "the server refuses this client; failing all requests");
                slot.lock().terminal = Some(e.clone());
                slot.fail_queue(&e);
                return None;
            }
            Some(Err(e)) => {
                debug!(slot = slot.id, error = %e, retry_in = ?*backoff, "reconnect failed");
                let wait = *backoff;
                *backoff = (*backoff * 2).min(opts.reconnect_max);
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = slot.expire_loop(io_timeout) => {}
                }
            }
        }
    }
}
