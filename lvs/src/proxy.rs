//! The userspace data plane: a NAT-style TCP proxy (clients see the VIP, real servers see
//! the director) and a UDP forwarder with a session table. Every connection is scheduled
//! by the shared [`Director`] and reported back to it (connecting → established → closed)
//! so the schedulers see the kernel's active/inactive counts.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tracing::{debug, warn};

use crate::model::{Protocol, Stats};
use crate::sched::Millis;
use crate::sys;
use crate::table::{ConnId, Director};

/// How long a connect to a real server may take before the client is dropped.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Size of each direction's copy buffer.
const BUF: usize = 16 * 1024;
/// Counters are flushed into the table at least every this many bytes.
const FLUSH_BYTES: u64 = 1 << 20;

/// The table and the clock it runs on, shared by the data plane, the control socket and the
/// health checks.
#[derive(Debug)]
pub struct Shared {
    /// The table.
    pub dir: Mutex<Director>,
    start: Instant,
}

impl Shared {
    /// Wraps a table.
    pub fn new(dir: Director) -> Arc<Shared> {
        Arc::new(Shared { dir: Mutex::new(dir), start: Instant::now() })
    }

    /// Milliseconds since start (the table's clock).
    pub fn now_ms(&self) -> Millis {
        self.start.elapsed().as_millis() as Millis
    }

    /// Locks the table (a poisoned lock is still usable: the table has no invariant a
    /// panicking reader could break half-way).
    pub fn lock(&self) -> std::sync::MutexGuard<'_, Director> {
        self.dir.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Binds a listening TCP socket (IP_FREEBIND: the VIP need not be up yet, as on a backup
/// director waiting to take over).
pub fn bind_tcp(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let s = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_freebind(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    TcpListener::from_std(s.into())
}

/// Binds a UDP socket, with IP_FREEBIND like [`bind_tcp`].
pub fn bind_udp(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let s = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::DGRAM, None)?;
    s.set_reuse_address(true)?;
    s.set_freebind(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    UdpSocket::from_std(s.into())
}

/// Accepts clients on `listener` (bound to `vaddr`) for ever, one task per connection.
pub async fn serve_tcp(shared: Arc<Shared>, listener: TcpListener, vaddr: SocketAddr) {
    loop {
        match listener.accept().await {
            Ok((client, peer)) => {
                let shared = shared.clone();
                tokio::spawn(async move { proxy_tcp(shared, client, peer, vaddr).await });
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                warn!(vaddr = %vaddr, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn proxy_tcp(shared: Arc<Shared>, client: TcpStream, peer: SocketAddr, vaddr: SocketAddr) {
    let now = shared.now_ms();
    let sched = shared.lock().connect(Protocol::Tcp, peer, vaddr, now);
    let sched = match sched {
        Ok(s) => s,
        Err(e) => {
            debug!(client = %peer, vaddr = %vaddr, error = %e, "dropping connection");
            return;
        }
    };
    let upstream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(sched.daddr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            debug!(client = %peer, server = %sched.daddr, error = %e, "real server refused");
            shared.lock().closed(sched.conn, shared.now_ms());
            return;
        }
        Err(_) => {
            debug!(client = %peer, server = %sched.daddr, "connect to real server timed out");
            shared.lock().closed(sched.conn, shared.now_ms());
            return;
        }
    };
    shared.lock().established(sched.conn);
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let inbound = pump(&shared, sched.conn, &client, &upstream, true);
    let outbound = pump(&shared, sched.conn, &upstream, &client, false);
    tokio::join!(inbound, outbound);
    shared.lock().closed(sched.conn, shared.now_ms());
}

/// Per-direction traffic counters, flushed into the table now and then.
struct Meter<'a> {
    shared: &'a Shared,
    conn: ConnId,
    inbound: bool,
    pending: Stats,
}

impl Meter<'_> {
    fn add(&mut self, n: usize) {
        if self.inbound {
            self.pending.inpkts += 1;
            self.pending.inbytes += n as u64;
        } else {
            self.pending.outpkts += 1;
            self.pending.outbytes += n as u64;
        }
        if self.pending.inbytes + self.pending.outbytes >= FLUSH_BYTES {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if self.pending.inbytes + self.pending.outbytes > 0 {
            self.shared.lock().account(self.conn, &self.pending);
            self.pending = Stats::default();
        }
    }
}

/// A copy buffer from this worker thread's pool (no allocation or zeroing per connection),
/// given back on drop.
struct PooledBuf(Vec<u8>);

impl PooledBuf {
    fn take() -> PooledBuf {
        PooledBuf(BUFS.with(|b| b.borrow_mut().pop()).unwrap_or_else(|| vec![0u8; BUF]))
    }
}

impl std::ops::Deref for PooledBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl std::ops::DerefMut for PooledBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.0
    }
}

impl Drop for PooledBuf {
    fn drop(&mut self) {
        let v = std::mem::take(&mut self.0);
        // try_with: a task dropped while its thread exits finds the pool gone.
        let _ = BUFS.try_with(|b| {
            let mut b = b.borrow_mut();
            if b.len() < 256 {
                b.push(v);
            }
        });
    }
}

thread_local! {
    /// Copy buffers kept for reuse by this worker thread.
    static BUFS: std::cell::RefCell<Vec<Vec<u8>>> = const { std::cell::RefCell::new(Vec::new()) };
    /// Empty pipes kept for reuse by this worker thread.
    static PIPES: std::cell::RefCell<Vec<sys::Pipe>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Reads that fill the whole buffer this many times in a row switch a direction to splice.
const SPLICE_AFTER_FULL_READS: u32 = 2;

/// Copies one direction until EOF or error, then half-closes the other side. Small
/// exchanges are copied through a user-space buffer (one read, one write); once a
/// direction carries bulk data (reads fill the buffer), it switches to splice through a
/// pipe, so the bytes never reach user space.
async fn pump(shared: &Shared, conn: ConnId, from: &TcpStream, to: &TcpStream, inbound: bool) {
    let mut meter = Meter { shared, conn, inbound, pending: Stats::default() };
    let mut buf = PooledBuf::take();
    let mut full_reads = 0;
    'copy: loop {
        let n = loop {
            if from.readable().await.is_err() {
                break 'copy;
            }
            match read_drained(from, &mut buf) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(_) => break 'copy,
            }
        };
        if n == 0 {
            break;
        }
        if write_all(to, &buf[..n]).await.is_err() {
            break;
        }
        meter.add(n);
        full_reads = if n == buf.len() { full_reads + 1 } else { 0 };
        if full_reads >= SPLICE_AFTER_FULL_READS {
            drop(buf);
            splice_loop(from, to, &mut meter).await;
            meter.flush();
            let _ = socket2::SockRef::from(to).shutdown(std::net::Shutdown::Write);
            return;
        }
    }
    meter.flush();
    let _ = socket2::SockRef::from(to).shutdown(std::net::Shutdown::Write);
}

/// One read from `from`. A short read (fewer bytes than `buf` holds) means the receive
/// queue was emptied, so the socket's readiness is cleared right away, sparing the read
/// that would only return EAGAIN before waiting. Safe with edge-triggered epoll for the
/// same reason tokio's own clearing is: readiness is cleared only if no event arrived since
/// it was sampled before the read, a later arrival is still queued in epoll, and tokio
/// never clears the read-closed bit (so a FIN queued behind the data is not lost).
fn read_drained(from: &TcpStream, buf: &mut [u8]) -> std::io::Result<usize> {
    use std::io::Read;
    let mut short = 0;
    let r = from.try_io(tokio::io::Interest::READABLE, || {
        let n = (&*socket2::SockRef::from(from)).read(buf)?;
        if n > 0 && n < buf.len() {
            short = n;
            return Err(std::io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    });
    match r {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && short > 0 => Ok(short),
        r => r,
    }
}

async fn write_all(to: &TcpStream, mut data: &[u8]) -> std::io::Result<()> {
    while !data.is_empty() {
        to.writable().await?;
        match to.try_write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

async fn splice_loop(from: &TcpStream, to: &TcpStream, meter: &mut Meter<'_>) {
    use std::os::fd::AsRawFd;
    use tokio::io::Interest;
    let pipe = match PIPES.with(|p| p.borrow_mut().pop()).map(Ok).unwrap_or_else(sys::Pipe::new) {
        Ok(p) => p,
        Err(e) => {
            warn!(error = %e, "cannot create a pipe; copying instead");
            let mut buf = vec![0u8; BUF];
            loop {
                let n = match from.readable().await.and_then(|_| from.try_read(&mut buf)) {
                    Ok(0) => return,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    Err(_) => return,
                };
                if write_all(to, &buf[..n]).await.is_err() {
                    return;
                }
                meter.add(n);
            }
        }
    };
    let chunk = pipe.capacity();
    let (rfd, wfd) = (pipe.r.as_raw_fd(), pipe.w.as_raw_fd());
    let clean = 'outer: loop {
        let n = loop {
            if from.readable().await.is_err() {
                break 'outer true;
            }
            match from.try_io(Interest::READABLE, || sys::splice(from.as_raw_fd(), wfd, chunk)) {
                Ok(0) => break 'outer true,
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(_) => break 'outer true,
            }
        };
        let mut left = n;
        while left > 0 {
            if to.writable().await.is_err() {
                break 'outer false;
            }
            match to.try_io(Interest::WRITABLE, || sys::splice(rfd, to.as_raw_fd(), left)) {
                Ok(m) => left -= m,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(_) => break 'outer false,
            }
        }
        meter.add(n);
    };
    // Only an empty pipe goes back to the pool.
    if clean {
        let _ = PIPES.try_with(|p| {
            let mut p = p.borrow_mut();
            if p.len() < 64 {
                p.push(pipe);
            }
        });
    }
}

struct Session {
    upstream: Arc<UdpSocket>,
    conn: ConnId,
    last_ms: Arc<AtomicU64>,
}

/// Forwards datagrams arriving at `vaddr` for ever: one session (and one upstream socket)
/// per client address, idle sessions expiring after the table's UDP timeout.
pub async fn serve_udp(shared: Arc<Shared>, sock: UdpSocket, vaddr: SocketAddr) {
    let sock = Arc::new(sock);
    let sessions: Arc<Mutex<HashMap<SocketAddr, Session>>> = Arc::new(Mutex::new(HashMap::new()));
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, client) = match sock.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                debug!(vaddr = %vaddr, error = %e, "udp receive failed");
                continue;
            }
        };
        let now = shared.now_ms();
        let existing = {
            let s = sessions.lock().unwrap_or_else(|e| e.into_inner());
            s.get(&client).map(|s| (s.upstream.clone(), s.conn, s.last_ms.clone()))
        };
        let (upstream, conn) = match existing {
            Some((u, c, last)) => {
                last.store(now, Ordering::Relaxed);
                (u, c)
            }
            None => {
                let sched = match shared.lock().connect(Protocol::Udp, client, vaddr, now) {
                    Ok(s) => s,
                    Err(e) => {
                        debug!(client = %client, error = %e, "dropping datagram");
                        continue;
                    }
                };
                let any: SocketAddr =
                    if sched.daddr.is_ipv4() { "0.0.0.0:0".parse() } else { "[::]:0".parse() }.expect("literal");
                let up = match UdpSocket::bind(any).await {
                    Ok(u) => u,
                    Err(e) => {
                        warn!(error = %e, "cannot open an upstream UDP socket");
                        shared.lock().closed(sched.conn, now);
                        continue;
                    }
                };
                if let Err(e) = up.connect(sched.daddr).await {
                    debug!(server = %sched.daddr, error = %e, "udp connect failed");
                    shared.lock().closed(sched.conn, now);
                    continue;
                }
                let up = Arc::new(up);
                let last = Arc::new(AtomicU64::new(now));
                sessions
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(client, Session { upstream: up.clone(), conn: sched.conn, last_ms: last.clone() });
                tokio::spawn(udp_replies(
                    shared.clone(),
                    sessions.clone(),
                    sock.clone(),
                    up.clone(),
                    client,
                    sched.conn,
                    last,
                ));
                (up, sched.conn)
            }
        };
        if upstream.send(&buf[..n]).await.is_ok() {
            let mut s = shared.lock();
            s.touch(conn, now);
            s.account(conn, &Stats { conns: 0, inpkts: 1, outpkts: 0, inbytes: n as u64, outbytes: 0 });
        }
    }
}

async fn udp_replies(
    shared: Arc<Shared>,
    sessions: Arc<Mutex<HashMap<SocketAddr, Session>>>,
    listen: Arc<UdpSocket>,
    up: Arc<UdpSocket>,
    client: SocketAddr,
    conn: ConnId,
    last: Arc<AtomicU64>,
) {
    let mut buf = vec![0u8; 65536];
    loop {
        let idle_ms = shared.lock().timeouts.udp_s as u64 * 1000;
        let since = shared.now_ms().saturating_sub(last.load(Ordering::Relaxed));
        if since >= idle_ms {
            break;
        }
        let wait = Duration::from_millis(idle_ms - since);
        match tokio::time::timeout(wait, up.recv(&mut buf)).await {
            Ok(Ok(n)) => {
                let now = shared.now_ms();
                last.store(now, Ordering::Relaxed);
                if listen.send_to(&buf[..n], client).await.is_ok() {
                    let mut s = shared.lock();
                    s.touch(conn, now);
                    s.account(conn, &Stats { conns: 0, inpkts: 0, outpkts: 1, inbytes: 0, outbytes: n as u64 });
                }
            }
            // ICMP port unreachable and the like: keep the session until it idles out.
            Ok(Err(_)) => tokio::time::sleep(Duration::from_millis(10)).await,
            Err(_) => {}
        }
    }
    sessions.lock().unwrap_or_else(|e| e.into_inner()).remove(&client);
    shared.lock().closed(conn, shared.now_ms());
}
