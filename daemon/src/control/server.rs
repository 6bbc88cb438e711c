//! The daemon's end: creating the socket, and reading requests / writing replies on one
//! connection, blocking ([`Conn`]) or on tokio ([`AsyncConn`]).

use std::io::{self, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{decode_request, read_line, read_line_async, reply_line, ControlError, ErrorKind, Line, MAX_MESSAGE};

/// Who may connect to a control socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SocketAccess {
    /// Mode 0600: the daemon's user (root) only.
    #[default]
    Owner,
    /// Mode 0660 with this group: members of an operators' group too.
    Group(u32),
}

/// Creates the control socket at `path`: makes its directory, removes a stale socket left by
/// a daemon that died (nobody answers on it), refuses when a live daemon listens there, and
/// sets the access mode.
pub fn bind(path: &Path, access: SocketAccess) -> io::Result<UnixListener> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("{} is in use by a running daemon; stop it first or choose another socket", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    let l = UnixListener::bind(path)?;
    match access {
        SocketAccess::Owner => std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?,
        SocketAccess::Group(gid) => {
            std::os::unix::fs::chown(path, None, Some(gid))?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
        }
    }
    Ok(l)
}

/// Turns a line read into what the connection does next: a request to answer, a malformed
/// line to refuse (the connection goes on), or an end (closed, or too long to resynchronise).
fn request_of<R: DeserializeOwned>(line: Line) -> Next<R> {
    match line {
        Line::Closed => Next::Closed,
        Line::TooLong => {
            Next::Fatal(ControlError::new(ErrorKind::TooLarge, format!("request exceeds {MAX_MESSAGE} bytes")))
        }
        Line::Complete(l) => match decode_request(&l) {
            Ok(r) => Next::Request(r),
            Err(bad) => Next::Refuse(bad),
        },
    }
}

enum Next<R> {
    Request(R),
    Refuse(ControlError),
    Fatal(ControlError),
    Closed,
}

/// One client connection, blocking.
#[derive(Debug)]
pub struct Conn {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Conn {
    pub fn new(stream: UnixStream) -> io::Result<Conn> {
        let writer = stream.try_clone()?;
        Ok(Conn { reader: BufReader::new(stream), writer })
    }

    /// The underlying stream (for timeouts and peer credentials).
    pub fn stream(&self) -> &UnixStream {
        &self.writer
    }

    /// The next request; `None` when the client closed. A malformed line is answered with a
    /// `bad_request` error and skipped; an over-long one ends the connection with an error.
    pub fn next_request<R: DeserializeOwned>(&mut self) -> io::Result<Option<R>> {
        loop {
            match request_of(read_line(&mut self.reader)?) {
                Next::Request(r) => return Ok(Some(r)),
                Next::Refuse(bad) => self.reply::<()>(Err(bad))?,
                Next::Fatal(e) => {
                    self.reply::<()>(Err(e.clone()))?;
                    return Err(io::Error::new(io::ErrorKind::InvalidData, e.message));
                }
                Next::Closed => return Ok(None),
            }
        }
    }

    /// Sends one reply line.
    pub fn reply<T: Serialize>(&mut self, result: Result<T, ControlError>) -> io::Result<()> {
        self.writer.write_all(&reply_line(result))
    }
}

/// Answers requests on `stream` with `handler` until the client closes.
pub fn serve_blocking<R, T, F>(stream: UnixStream, mut handler: F) -> io::Result<()>
where
    R: DeserializeOwned,
    T: Serialize,
    F: FnMut(R) -> Result<T, ControlError>,
{
    let mut conn = Conn::new(stream)?;
    while let Some(req) = conn.next_request::<R>()? {
        conn.reply(handler(req))?;
    }
    Ok(())
}

/// One client connection on tokio.
#[derive(Debug)]
pub struct AsyncConn {
    reader: tokio::io::BufReader<tokio::net::unix::OwnedReadHalf>,
    writer: tokio::net::unix::OwnedWriteHalf,
}

impl AsyncConn {
    pub fn new(stream: tokio::net::UnixStream) -> AsyncConn {
        let (r, w) = stream.into_split();
        AsyncConn { reader: tokio::io::BufReader::new(r), writer: w }
    }

    /// As [`Conn::next_request`].
    pub async fn next_request<R: DeserializeOwned>(&mut self) -> io::Result<Option<R>> {
        loop {
            match request_of(read_line_async(&mut self.reader).await?) {
                Next::Request(r) => return Ok(Some(r)),
                Next::Refuse(bad) => self.reply::<()>(Err(bad)).await?,
                Next::Fatal(e) => {
                    self.reply::<()>(Err(e.clone())).await?;
                    return Err(io::Error::new(io::ErrorKind::InvalidData, e.message));
                }
                Next::Closed => return Ok(None),
            }
        }
    }

    /// As [`Conn::reply`].
    pub async fn reply<T: Serialize>(&mut self, result: Result<T, ControlError>) -> io::Result<()> {
        self.writer.write_all(&reply_line(result)).await
    }

    /// Waits until the client closes its end (for streams: a subscriber that went away).
    /// Bytes it sends meanwhile are discarded.
    pub async fn closed(&mut self) {
        let mut sink = [0u8; 512];
        loop {
            match self.reader.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use std::io::BufRead;
    use tokio::io::AsyncBufReadExt;

    #[derive(Debug, Deserialize, Serialize)]
    #[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
    enum Req {
        Echo { text: String },
        Fail,
    }

    #[test]
    fn blocking_server_and_client_talk() {
        let dir = std::env::temp_dir().join(format!("daemon-ctl-{}", std::process::id()));
        let path = dir.join("d.sock");
        let l = bind(&path, SocketAccess::Owner).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        // A second bind while the first listens is refused; after it is gone, a stale
        // socket file is replaced.
        assert_eq!(bind(&path, SocketAccess::Owner).unwrap_err().kind(), io::ErrorKind::AddrInUse);
        let t = std::thread::spawn(move || {
            // The refused bind's probe connection first (it closes at once), then the client.
            for s in l.incoming().take(2) {
                serve_blocking(s.unwrap(), |r: Req| match r {
                    Req::Echo { text } => Ok(text),
                    Req::Fail => Err(ControlError::busy("busy now")),
                })
                .unwrap();
            }
        });
        let mut c = super::super::Client::connect("testd", &path).unwrap();
        let got: String = c.call(&Req::Echo { text: "hi".into() }).unwrap();
        assert_eq!(got, "hi");
        match c.call::<_, String>(&Req::Fail) {
            Err(super::super::CallError::Remote(e)) => assert_eq!(e.kind, ErrorKind::Busy),
            other => panic!("{other:?}"),
        }
        // Garbage gets a bad_request and the connection keeps working.
        c.send_raw(b"not json\n").unwrap();
        match c.receive::<String>() {
            Err(super::super::CallError::Remote(e)) => assert_eq!(e.kind, ErrorKind::BadRequest),
            other => panic!("{other:?}"),
        }
        let got: String = c.call(&Req::Echo { text: "again".into() }).unwrap();
        assert_eq!(got, "again");
        drop(c);
        t.join().unwrap();
        let l2 = bind(&path, SocketAccess::Owner).unwrap();
        drop(l2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn over_long_request_is_refused_and_closed() {
        let (a, b) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || {
            let mut conn = Conn::new(a).unwrap();
            conn.next_request::<Req>().unwrap_err()
        });
        let writer = std::thread::spawn({
            let mut b = b.try_clone().unwrap();
            move || {
                let chunk = vec![b'x'; 1 << 20];
                for _ in 0..17 {
                    if b.write_all(&chunk).is_err() {
                        break;
                    }
                }
            }
        });
        let mut r = BufReader::new(b);
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        assert!(line.contains("too_large"), "{line}");
        assert_eq!(t.join().unwrap().kind(), io::ErrorKind::InvalidData);
        drop(r);
        writer.join().unwrap();
    }

    #[tokio::test]
    async fn async_conn_answers() {
        let (a, b) = tokio::net::UnixStream::pair().unwrap();
        let server = tokio::spawn(async move {
            let mut c = AsyncConn::new(a);
            while let Some(r) = c.next_request::<Req>().await.unwrap() {
                let reply = match r {
                    Req::Echo { text } => Ok(text),
                    Req::Fail => Err(ControlError::refused("no")),
                };
                c.reply(reply).await.unwrap();
            }
        });
        let (r, mut w) = b.into_split();
        w.write_all(b"{\"op\":\"echo\",\"text\":\"x\"}\n{\"op\":\"nope\"}\n").await.unwrap();
        let mut r = tokio::io::BufReader::new(r);
        let mut l1 = String::new();
        r.read_line(&mut l1).await.unwrap();
        assert_eq!(l1, "{\"ok\":\"x\"}\n");
        let mut l2 = String::new();
        r.read_line(&mut l2).await.unwrap();
        assert!(l2.starts_with("{\"error\":{\"kind\":\"bad_request\""), "{l2}");
        drop(w);
        server.await.unwrap();
    }
}
