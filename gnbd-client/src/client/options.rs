//! [`ClientOptions`]: how to reach an export, and how hard to try.

use std::time::Duration;

use crate::tls::TlsOptions;

/// How to reach an export, and how hard to try.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientOptions {
    /// `host:port` for TCP, or the path of a Unix socket (anything containing a `/`, or
    /// prefixed with `unix:`).
    pub addr: String,
    /// Export name (empty: the server's default export).
    pub export: String,
    /// Connections to open when the server advertises `NBD_FLAG_CAN_MULTI_CONN` (otherwise
    /// one); requests are spread over them round-robin. 0 counts as 1.
    pub connections: usize,
    /// GNBD's timeout mode: a request that cannot be answered because the server is
    /// unreachable fails with [`ClientError::TimedOut`] after this long. `None` (or zero):
    /// wait for the server forever, resubmitting after every reconnect.
    pub io_timeout: Option<Duration>,
    /// Bound on one connect-and-handshake attempt.
    pub connect_timeout: Duration,
    /// First delay between reconnection attempts; doubles up to `reconnect_max`.
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// Ask for structured replies (needed for block status and sparse reads). Default on.
    pub structured_replies: bool,
    /// Ask for extended headers (64-bit lengths) before structured replies. Default on.
    pub extended_headers: bool,
    /// STARTTLS with these certificates before anything else (`None`: plain text).
    pub tls: Option<TlsOptions>,
    /// Source address for TCP connections (a node's cluster address, which servers use to
    /// tell nodes apart). `None`: chosen by the kernel.
    pub local_addr: Option<std::net::IpAddr>,
}

impl ClientOptions {
    /// One connection, no I/O timeout, back-off from 100 ms to 5 s.
    pub fn new(addr: impl Into<String>, export: impl Into<String>) -> Self {
        Self {
            addr: addr.into(),
            export: export.into(),
            connections: 1,
            io_timeout: None,
            connect_timeout: Duration::from_secs(10),
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(5),
            structured_replies: true,
            extended_headers: true,
            tls: None,
            local_addr: None,
        }
    }

    pub(super) fn timeout(&self) -> Option<Duration> {
        self.io_timeout.filter(|d| !d.is_zero())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_timeout_means_forever() {
        let mut o = ClientOptions::new("h:1", "e");
        o.io_timeout = Some(Duration::ZERO);
        assert_eq!(o.timeout(), None);
        o.io_timeout = Some(Duration::from_secs(2));
        assert_eq!(o.timeout(), Some(Duration::from_secs(2)));
    }
}
