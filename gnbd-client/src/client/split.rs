//! Request splitting: reads and writes above the server's maximum block size, and trims,
//! zeroes and block-status queries above what one header can carry, go out as several
//! requests at once.

/// Largest length of one TRIM / WRITE_ZEROES / BLOCK_STATUS request: fits a compact header
/// and stays 4 KiB aligned.
pub(super) const MAX_RANGE: u64 = 0xFFFF_F000;
/// The spec's default maximum block size when the server sends none.
pub(super) const DEFAULT_MAX_BLOCK: u64 = 32 << 20;

use nbd_proto::Command;

use super::Client;
use crate::conn::Op;
use crate::error::ClientError;

impl Client {
    /// Pieces `(offset, len)` of at most `max` bytes covering `offset..offset+len`.
    pub(super) fn pieces(offset: u64, len: u64, max: u64) -> impl Iterator<Item = (u64, u64)> {
        let mut at = 0;
        std::iter::from_fn(move || {
            (at < len).then(|| {
                let n = (len - at).min(max);
                let p = (offset + at, n);
                at += n;
                p
            })
        })
    }

    /// Sends every piece at once, then waits for all of them (first error wins).
    pub(super) async fn range_op(
        &self,
        command: Command,
        flags: u16,
        offset: u64,
        len: u64,
        max: u64,
    ) -> Result<(), ClientError> {
        let rxs: Vec<_> = Self::pieces(offset, len, max)
            .map(|(o, l)| self.start(Op { command, flags, offset: o, length: l }, None))
            .collect::<Result<_, _>>()?;
        for rx in rxs {
            Self::wait(rx).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_cover_the_range() {
        let v: Vec<_> = Client::pieces(10, 25, 10).collect();
        assert_eq!(v, vec![(10, 10), (20, 10), (30, 5)]);
        assert_eq!(Client::pieces(0, 0, 10).count(), 0);
    }
}
