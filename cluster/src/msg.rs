//! Messages the node daemons multicast to each other through the corosync process group
//! (`fenced`): one JSON object per CPG message, tagged by `t`. See `docs/protocols.md`.

use serde::{Deserialize, Serialize};

/// Largest message accepted from the group.
pub const MAX_MSG: usize = 4 << 20;

/// A group message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case", deny_unknown_fields)]
pub enum Msg {
    /// `victim` was fenced by `by` with `method`.
    Fenced { victim: u32, by: u32, method: String, at_unix_ms: u64 },
    /// The operator confirmed that `victim` is off (fence_ack_manual).
    AckManual { victim: u32 },
    /// A new cluster.conf: members with an older version install it; others ignore it.
    Config { version: u64, xml: String },
}

/// Why a message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MsgError {
    /// Too large.
    #[error("message of {0} bytes is larger than the {MAX_MSG} accepted")]
    TooLarge(usize),
    /// Not a message of ours.
    #[error("invalid group message: {0}")]
    Invalid(String),
}

impl Msg {
    /// Encodes the message.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("messages serialize")
    }

    /// Decodes a message received from the group.
    pub fn decode(bytes: &[u8]) -> Result<Msg, MsgError> {
        if bytes.len() > MAX_MSG {
            return Err(MsgError::TooLarge(bytes.len()));
        }
        serde_json::from_slice(bytes).map_err(|e| MsgError::Invalid(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn msg() -> impl Strategy<Value = Msg> {
        prop_oneof![
            (any::<u32>(), any::<u32>(), "\\PC{0,20}", any::<u64>())
                .prop_map(|(victim, by, method, at_unix_ms)| Msg::Fenced { victim, by, method, at_unix_ms }),
            any::<u32>().prop_map(|victim| Msg::AckManual { victim }),
            (any::<u64>(), "\\PC{0,200}").prop_map(|(version, xml)| Msg::Config { version, xml }),
        ]
    }

    proptest! {
        #[test]
        fn decode_encode(m in msg()) {
            prop_assert_eq!(Msg::decode(&m.encode()).unwrap(), m);
        }

        #[test]
        fn garbage_is_refused_not_panicking(b in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = Msg::decode(&b);
        }
    }

    #[test]
    fn unknown_fields_are_refused() {
        assert!(Msg::decode(br#"{"t":"ack_manual","victim":1,"extra":2}"#).is_err());
        assert!(Msg::decode(br#"{"t":"reboot","victim":1}"#).is_err());
    }
}
