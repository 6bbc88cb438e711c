//! A service's cluster-wide state record: what every node knows about one service (state,
//! owner, last owner, a pending request), kept in the value block of the service's DLM lock
//! and changed only under that lock held EX. Layout (big-endian, [`RECORD_LEN`] bytes) in
//! `docs/state-record.md`.

use serde::{Deserialize, Serialize};

/// Bytes of an encoded record.
pub const RECORD_LEN: usize = 40;
/// First two bytes of every record: "RG".
pub const RECORD_MAGIC: u16 = 0x5247;
/// Layout version.
pub const RECORD_VERSION: u8 = 1;

/// A service's state, as clustat shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Not running; will be placed (unless held by `clusvcadm -s`).
    #[default]
    Stopped,
    /// Being started by its owner.
    Starting,
    /// Running on its owner.
    Started,
    /// Being stopped by its owner.
    Stopping,
    /// Its owner could not stop it cleanly: nobody starts it until `clusvcadm -d`.
    Failed,
    /// Not to run until `clusvcadm -e`.
    Disabled,
    /// Its owner was lost or it failed: waiting for the next node to start it.
    Recovering,
}

impl State {
    /// The lowercase name clustat prints.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Stopped => "stopped",
            State::Starting => "starting",
            State::Started => "started",
            State::Stopping => "stopping",
            State::Failed => "failed",
            State::Disabled => "disabled",
            State::Recovering => "recovering",
        }
    }

    fn code(self) -> u8 {
        match self {
            State::Stopped => 1,
            State::Starting => 2,
            State::Started => 3,
            State::Stopping => 4,
            State::Failed => 5,
            State::Disabled => 6,
            State::Recovering => 7,
        }
    }

    fn from_code(c: u8) -> Option<State> {
        Some(match c {
            1 => State::Stopped,
            2 => State::Starting,
            3 => State::Started,
            4 => State::Stopping,
            5 => State::Failed,
            6 => State::Disabled,
            7 => State::Recovering,
            _ => return None,
        })
    }
}

/// A request an operator left in the record for the owner to carry out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Want {
    /// Nothing pending.
    #[default]
    None,
    /// Stop and disable (`-d`).
    Disable,
    /// Stop and hold stopped (`-s`).
    Stop,
    /// Stop and start again in place (`-R`).
    Restart,
    /// Stop here and start on `target` (or the next node) (`-r`).
    Relocate,
}

impl Want {
    fn code(self) -> u8 {
        match self {
            Want::None => 0,
            Want::Disable => 1,
            Want::Stop => 2,
            Want::Restart => 3,
            Want::Relocate => 4,
        }
    }

    fn from_code(c: u8) -> Option<Want> {
        Some(match c {
            0 => Want::None,
            1 => Want::Disable,
            2 => Want::Stop,
            3 => Want::Restart,
            4 => Want::Relocate,
            _ => return None,
        })
    }
}

/// Flag: frozen (`-Z`): no status checks, no recovery, no moves.
pub const FLAG_FROZEN: u8 = 1;
/// Flag: held stopped by `-s`: not placed until `-e`.
pub const FLAG_HELD: u8 = 2;

/// The cluster-wide record of one service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Record {
    /// State.
    pub state: State,
    /// The node running it (or starting/stopping it), 0 for none.
    pub owner: u32,
    /// The node that ran it last, 0 for none.
    pub last_owner: u32,
    /// Where `-e -m` / `-r -m` asked it to run, 0 for anywhere.
    pub target: u32,
    /// A pending operator request.
    pub want: Want,
    /// [`FLAG_FROZEN`], [`FLAG_HELD`].
    pub flags: u8,
    /// Node ids 1..=64 where starting it failed since it last ran (bit id-1); placement
    /// skips them. Cleared when it starts or is enabled by hand.
    pub tried: u64,
    /// Restarts in place since it last moved (shown by clustat -l).
    pub restarts: u32,
    /// Bumped on every change: lets a waiting clusvcadm see that something happened.
    pub generation: u32,
}

/// Why bytes are not a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Fewer bytes than a record.
    #[error("record is {got} bytes, expected {RECORD_LEN}")]
    Short {
        /// Bytes given.
        got: usize,
    },
    /// Not a record (wrong magic or version).
    #[error("not a service record (magic {magic:#06x}, version {version})")]
    Foreign {
        /// Magic found.
        magic: u16,
        /// Version found.
        version: u8,
    },
    /// An unknown state or request code.
    #[error("unknown {what} code {code}")]
    BadCode {
        /// "state" or "request".
        what: &'static str,
        /// The code.
        code: u8,
    },
}

impl Record {
    /// Whether node `id` is in the tried set.
    pub fn tried(&self, id: u32) -> bool {
        (1..=64).contains(&id) && self.tried & (1u64 << (id - 1)) != 0
    }

    /// Adds node `id` to the tried set (ids above 64 are not remembered).
    pub fn add_tried(&mut self, id: u32) {
        if (1..=64).contains(&id) {
            self.tried |= 1u64 << (id - 1);
        }
    }

    /// Frozen by `-Z`.
    pub fn frozen(&self) -> bool {
        self.flags & FLAG_FROZEN != 0
    }

    /// Held stopped by `-s`.
    pub fn held(&self) -> bool {
        self.flags & FLAG_HELD != 0
    }

    /// Encodes into [`RECORD_LEN`] bytes.
    pub fn encode(&self) -> [u8; RECORD_LEN] {
        let mut b = [0u8; RECORD_LEN];
        b[0..2].copy_from_slice(&RECORD_MAGIC.to_be_bytes());
        b[2] = RECORD_VERSION;
        b[3] = self.state.code();
        b[4..8].copy_from_slice(&self.owner.to_be_bytes());
        b[8..12].copy_from_slice(&self.last_owner.to_be_bytes());
        b[12..16].copy_from_slice(&self.target.to_be_bytes());
        b[16] = self.want.code();
        b[17] = self.flags;
        // 18..20 reserved (zero).
        b[20..28].copy_from_slice(&self.tried.to_be_bytes());
        b[28..32].copy_from_slice(&self.restarts.to_be_bytes());
        b[32..36].copy_from_slice(&self.generation.to_be_bytes());
        // 36..40 reserved (zero).
        b
    }

    /// Decodes a value block. `Ok(None)` for a block that was never written (all zero):
    /// the service has no record yet.
    pub fn decode(b: &[u8]) -> Result<Option<Record>, RecordError> {
        if b.iter().all(|&x| x == 0) {
            return Ok(None);
        }
        if b.len() < RECORD_LEN {
            return Err(RecordError::Short { got: b.len() });
        }
        let u32_at = |o: usize| u32::from_be_bytes(b[o..o + 4].try_into().expect("4 bytes"));
        let magic = u16::from_be_bytes([b[0], b[1]]);
        if magic != RECORD_MAGIC || b[2] != RECORD_VERSION {
            return Err(RecordError::Foreign { magic, version: b[2] });
        }
        Ok(Some(Record {
            state: State::from_code(b[3]).ok_or(RecordError::BadCode { what: "state", code: b[3] })?,
            owner: u32_at(4),
            last_owner: u32_at(8),
            target: u32_at(12),
            want: Want::from_code(b[16]).ok_or(RecordError::BadCode { what: "request", code: b[16] })?,
            flags: b[17],
            tried: u64::from_be_bytes(b[20..28].try_into().expect("8 bytes")),
            restarts: u32_at(28),
            generation: u32_at(32),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_state() -> impl Strategy<Value = State> {
        (1u8..=7).prop_map(|c| State::from_code(c).unwrap())
    }

    fn arb_record() -> impl Strategy<Value = Record> {
        (
            arb_state(),
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
            0u8..=4,
            any::<u8>(),
            any::<u64>(),
            any::<u32>(),
            any::<u32>(),
        )
            .prop_map(|(state, owner, last_owner, target, w, flags, tried, restarts, generation)| Record {
                state,
                owner,
                last_owner,
                target,
                want: Want::from_code(w).unwrap(),
                flags,
                tried,
                restarts,
                generation,
            })
    }

    proptest! {
        #[test]
        fn decode_encode_round_trips(r in arb_record()) {
            prop_assert_eq!(Record::decode(&r.encode()), Ok(Some(r)));
        }

        #[test]
        fn decode_never_panics(b in prop::collection::vec(any::<u8>(), 0..80)) {
            let _ = Record::decode(&b);
        }
    }

    #[test]
    fn empty_block_is_no_record_and_garbage_is_refused() {
        assert_eq!(Record::decode(&[0u8; 32]), Ok(None));
        assert_eq!(Record::decode(&[1u8; 4]), Err(RecordError::Short { got: 4 }));
        let mut b = Record::default().encode();
        b[3] = 99;
        assert_eq!(Record::decode(&b), Err(RecordError::BadCode { what: "state", code: 99 }));
        b[0] = 0;
        assert!(matches!(Record::decode(&b), Err(RecordError::Foreign { .. })));
    }

    #[test]
    fn tried_set() {
        let mut r = Record::default();
        r.add_tried(1);
        r.add_tried(64);
        r.add_tried(65);
        assert!(r.tried(1) && r.tried(64) && !r.tried(2) && !r.tried(65) && !r.tried(0));
    }
}
