//! The cluster key: a secret shared by the cluster's nodes and its gnbd servers, in a file
//! only root may read, and the HMAC-SHA256 signatures it puts on fence orders.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use thiserror::Error;

/// Default location of the cluster key.
pub const DEFAULT_KEY: &str = "/etc/cluster/gnbd.key";
/// Shortest acceptable key.
const MIN_KEY: usize = 32;

/// The cluster's shared secret.
pub struct ClusterKey(Vec<u8>);

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterKey(..)")
    }
}

#[derive(Debug, Error)]
pub enum KeyError {
    #[error("cannot read cluster key {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cluster key {path} is readable by other users (mode {mode:o}); run `chmod 600 {path}`")]
    Exposed { path: PathBuf, mode: u32 },
    #[error("cluster key {path} is too short ({len} bytes); use at least {MIN_KEY} random bytes, e.g. `head -c 64 /dev/urandom > {path}`")]
    TooShort { path: PathBuf, len: usize },
}

impl ClusterKey {
    /// Reads a key file, refusing one that other users could read.
    pub fn load(path: &Path) -> Result<ClusterKey, KeyError> {
        let read = |source| KeyError::Read { path: path.to_path_buf(), source };
        let meta = std::fs::metadata(path).map_err(read)?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::Exposed { path: path.to_path_buf(), mode });
        }
        let key = std::fs::read(path).map_err(read)?;
        if key.len() < MIN_KEY {
            return Err(KeyError::TooShort { path: path.to_path_buf(), len: key.len() });
        }
        Ok(ClusterKey(key))
    }

    /// A key from its bytes, for tests.
    #[cfg(test)]
    pub(crate) fn from_secret(secret: Vec<u8>) -> ClusterKey {
        ClusterKey(secret)
    }

    fn mac(&self) -> Hmac<Sha256> {
        Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes keys of any length")
    }

    /// Hex HMAC of an order under a challenge.
    pub fn sign(&self, challenge: &str, request: &str) -> String {
        let mut m = self.mac();
        m.update(challenge.as_bytes());
        m.update(b"\n");
        m.update(request.as_bytes());
        hex(&m.finalize().into_bytes())
    }

    /// Constant-time check of a hex HMAC.
    pub fn verify(&self, challenge: &str, request: &str, mac_hex: &str) -> bool {
        let Some(mac) = unhex(mac_hex) else { return false };
        let mut m = self.mac();
        m.update(challenge.as_bytes());
        m.update(b"\n");
        m.update(request.as_bytes());
        m.verify_slice(&mac).is_ok()
    }
}

pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || s.len() > 256 {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_bind_key_challenge_and_order() {
        let k = ClusterKey(vec![7; 32]);
        let other = ClusterKey(vec![8; 32]);
        let mac = k.sign("c1", r#"{"verb":"bans"}"#);
        assert!(k.verify("c1", r#"{"verb":"bans"}"#, &mac));
        assert!(!k.verify("c2", r#"{"verb":"bans"}"#, &mac), "a replay under a new challenge fails");
        assert!(!k.verify("c1", r#"{"verb":"fence","node":"x"}"#, &mac), "a changed order fails");
        assert!(!other.verify("c1", r#"{"verb":"bans"}"#, &mac), "another key fails");
        assert!(!k.verify("c1", r#"{"verb":"bans"}"#, "zz"));
        assert!(!k.verify("c1", r#"{"verb":"bans"}"#, ""));
    }

    #[test]
    fn exposed_or_short_keys_are_refused() {
        let dir = std::env::temp_dir().join(format!("gnbd-key-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("key");
        std::fs::write(&p, [1u8; 64]).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(ClusterKey::load(&p), Err(KeyError::Exposed { .. })));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(ClusterKey::load(&p).is_ok());
        std::fs::write(&p, [1u8; 8]).unwrap();
        assert!(matches!(ClusterKey::load(&p), Err(KeyError::TooShort { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
