//! Opening a connection: TCP (optionally from a chosen source address) or a Unix socket,
//! STARTTLS, and the sans-IO handshake of `nbd_proto` driven to the transmission phase; and
//! listing a server's exports.

use std::io;
use std::path::Path;
use std::time::Duration;

use nbd_proto::{ClientConfig, ClientHandshake, ClientNegotiated, ClientStatus, ServerEntry};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio::time::timeout;

use crate::error::ClientError;
use crate::tls::TlsOptions;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::options::ClientOptions;

pub(super) type ReadHalf = Box<dyn AsyncRead + Unpin + Send>;
pub(super) type WriteHalf = Box<dyn AsyncWrite + Unpin + Send>;

/// A connected, negotiated socket.
pub(super) struct Session {
    pub(super) r: ReadHalf,
    pub(super) w: WriteHalf,
    pub(super) neg: ClientNegotiated,
}

pub(super) fn unix_path(addr: &str) -> Option<&Path> {
    if let Some(p) = addr.strip_prefix("unix:") {
        Some(Path::new(p))
    } else if addr.contains('/') {
        Some(Path::new(addr))
    } else {
        None
    }
}

/// Runs `hs` on `s` until it needs the driver (done, listed, or STARTTLS accepted).
pub(super) async fn drive<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    hs: &mut ClientHandshake,
    buf: &mut Vec<u8>,
) -> Result<ClientStatus, ClientError> {
    let mut tmp = [0u8; 4096];
    loop {
        let (used, status) = hs.feed(buf).map_err(ClientError::from_handshake)?;
        buf.drain(..used);
        // Output queued before this call (after STARTTLS) or by this feed.
        let out = hs.take_output();
        if !out.is_empty() {
            s.write_all(&out).await?;
            s.flush().await?;
        }
        if status != ClientStatus::Continue {
            if !buf.is_empty() {
                return Err(ClientError::Protocol(match status {
                    ClientStatus::StartTls => "the server sent plain text right after accepting STARTTLS".into(),
                    _ => "the server sent data right after the handshake".into(),
                }));
            }
            return Ok(status);
        }
        let n = s.read(&mut tmp).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed the connection during the handshake",
            )
            .into());
        }
        buf.extend_from_slice(&tmp[..n]);
    }
}

/// A socket after the handshake: still plain, or upgraded to TLS.
pub(super) enum Negotiated<S> {
    Plain(S, ClientStatus),
    Tls(Box<TlsStream<S>>, ClientStatus),
}

/// Runs the handshake with `cfg` on a fresh stream, upgrading it to TLS first when `tls`
/// says so.
pub(super) async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    mut cfg: ClientConfig,
    addr: &str,
    tls: Option<&TlsOptions>,
) -> Result<Negotiated<S>, ClientError> {
    // Certificates are loaded before connecting further: a bad file is a clear error.
    let tls = match tls {
        Some(t) => Some((TlsConnector::from(t.client_config()?), t.server_name(addr)?)),
        None => None,
    };
    cfg.starttls = tls.is_some();
    let mut hs = ClientHandshake::new(cfg);
    let mut buf = Vec::with_capacity(4096);
    match drive(&mut s, &mut hs, &mut buf).await? {
        ClientStatus::StartTls => {
            let (connector, name) = tls.expect("STARTTLS is only sent with TLS options");
            let mut t = connector.connect(name, s).await?;
            hs.tls_started();
            let status = drive(&mut t, &mut hs, &mut buf).await?;
            Ok(Negotiated::Tls(Box::new(t), status))
        }
        status => Ok(Negotiated::Plain(s, status)),
    }
}

pub(super) fn open_config(opts: &ClientOptions) -> ClientConfig {
    ClientConfig {
        structured: opts.structured_replies,
        extended: opts.extended_headers,
        base_allocation: opts.structured_replies || opts.extended_headers,
        ..ClientConfig::open(opts.export.clone())
    }
}

pub(super) fn done(status: ClientStatus) -> Result<ClientNegotiated, ClientError> {
    match status {
        ClientStatus::Done(neg) => Ok(neg),
        other => Err(ClientError::Protocol(format!("unexpected end of the handshake: {other:?}"))),
    }
}

/// Negotiates on `s` and splits the result into the reader's and the writer's halves.
pub(super) async fn negotiate<S>(
    s: S,
    opts: &ClientOptions,
    split: fn(S) -> (ReadHalf, WriteHalf),
) -> Result<Session, ClientError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    match handshake(s, open_config(opts), &opts.addr, opts.tls.as_ref()).await? {
        Negotiated::Plain(s, status) => {
            let neg = done(status)?;
            let (r, w) = split(s);
            Ok(Session { r, w, neg })
        }
        Negotiated::Tls(t, status) => {
            let neg = done(status)?;
            let (r, w) = tokio::io::split(*t);
            Ok(Session { r: Box::new(r), w: Box::new(w), neg })
        }
    }
}

/// A TCP connection to `addr`, from `local` when given.
pub(super) async fn connect_tcp(addr: &str, local: Option<std::net::IpAddr>) -> io::Result<TcpStream> {
    let Some(local) = local else { return TcpStream::connect(addr).await };
    let mut last = io::Error::new(io::ErrorKind::NotFound, format!("{addr} resolves to no address"));
    for target in tokio::net::lookup_host(addr).await? {
        let sock = if target.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
        sock.bind(std::net::SocketAddr::new(local, 0))?;
        match sock.connect(target).await {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Connects and negotiates once, bounded by `connect_timeout`.
pub(super) async fn open(opts: &ClientOptions) -> Result<Session, ClientError> {
    let attempt = async {
        if let Some(path) = unix_path(&opts.addr) {
            let split = |s: UnixStream| -> (ReadHalf, WriteHalf) {
                let (r, w) = s.into_split();
                (Box::new(r), Box::new(w))
            };
            negotiate(UnixStream::connect(path).await?, opts, split).await
        } else {
            let s = connect_tcp(&opts.addr, opts.local_addr).await?;
            s.set_nodelay(true)?;
            let split = |s: TcpStream| -> (ReadHalf, WriteHalf) {
                let (r, w) = s.into_split();
                (Box::new(r), Box::new(w))
            };
            negotiate(s, opts, split).await
        }
    };
    match timeout(opts.connect_timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("connecting to {} and negotiating took longer than {:?}", opts.addr, opts.connect_timeout),
        )
        .into()),
    }
}

/// Lists the exports a server offers (`NBD_OPT_LIST`).
pub async fn list_exports(addr: &str, connect_timeout: Duration) -> Result<Vec<ServerEntry>, ClientError> {
    let mut opts = ClientOptions::new(addr, "");
    opts.connect_timeout = connect_timeout;
    list_exports_with(&opts).await
}

/// Lists the exports of the server at `opts.addr` (over TLS when `opts.tls` is set), bounded
/// by `opts.connect_timeout`.
pub async fn list_exports_with(opts: &ClientOptions) -> Result<Vec<ServerEntry>, ClientError> {
    pub(super) async fn list<S: AsyncRead + AsyncWrite + Unpin>(
        s: S,
        opts: &ClientOptions,
    ) -> Result<Vec<ServerEntry>, ClientError> {
        let (status, _) = match handshake(s, ClientConfig::listing(), &opts.addr, opts.tls.as_ref()).await? {
            Negotiated::Plain(mut s, status) => (status, s.shutdown().await),
            Negotiated::Tls(mut t, status) => (status, t.shutdown().await),
        };
        match status {
            ClientStatus::Listed(v) => Ok(v),
            other => Err(ClientError::Protocol(format!("unexpected end of the listing: {other:?}"))),
        }
    }
    let addr = &opts.addr;
    let attempt = async {
        match unix_path(addr) {
            Some(path) => list(UnixStream::connect(path).await?, opts).await,
            None => list(connect_tcp(addr, opts.local_addr).await?, opts).await,
        }
    };
    timeout(opts.connect_timeout, attempt)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, format!("listing the exports of {addr} timed out")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn addresses() {
        assert_eq!(unix_path("/run/gnbd.sock"), Some(Path::new("/run/gnbd.sock")));
        assert_eq!(unix_path("unix:x.sock"), Some(Path::new("x.sock")));
        assert_eq!(unix_path("127.0.0.1:10809"), None);
        assert_eq!(unix_path("server:10809"), None);
    }
}
