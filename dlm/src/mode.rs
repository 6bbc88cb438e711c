//! Lock modes, request flags, completion statuses and status-block flags.
//!
//! Numeric values follow the Linux DLM user API (`DLM_LOCK_*`, `DLM_LKF_*`, `DLM_SBF_*`) so
//! that tools and logs read the same; they are also the values on the node-to-node wire.

use std::fmt;

/// One of the six classic lock modes, weakest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Mode {
    /// Null: no access, keeps the lock (and its value block) alive.
    Nl = 0,
    /// Concurrent read.
    Cr = 1,
    /// Concurrent write.
    Cw = 2,
    /// Protected read (shared).
    Pr = 3,
    /// Protected write (update).
    Pw = 4,
    /// Exclusive.
    Ex = 5,
}

/// The classic compatibility matrix, indexed `[granted][requested]`.
const COMPAT: [[bool; 6]; 6] = [
    /*        NL     CR     CW     PR     PW     EX   */
    /* NL */ [true, true, true, true, true, true],
    /* CR */ [true, true, true, true, true, false],
    /* CW */ [true, true, true, false, false, false],
    /* PR */ [true, true, false, true, false, false],
    /* PW */ [true, true, false, false, false, false],
    /* EX */ [true, false, false, false, false, false],
];

/// Which conversions may be queued with QUECVT, indexed `[granted][requested]`
/// (Linux `__quecvt_compat_matrix`): up-conversions only, plus PR<->CW.
const QUECVT_OK: [[bool; 6]; 6] = [
    [false, true, true, true, true, true],
    [false, false, true, true, true, true],
    [false, false, false, true, true, true],
    [false, false, true, false, true, true],
    [false, false, false, false, false, true],
    [false, false, false, false, false, false],
];

/// Lock value block operation on grant, indexed `[granted+1][requested]` where row 0 is "no
/// lock yet": 1 = copy the resource's block to the lock (read), 0 = copy the lock's block to
/// the resource (write), -1 = nothing (Linux `dlm_lvb_operations`).
const LVB_OPS: [[i8; 6]; 7] = [
    /*        NL  CR  CW  PR  PW  EX */
    /* UN */ [1, 1, 1, 1, 1, 1],
    /* NL */ [1, 1, 1, 1, 1, 1],
    /* CR */ [-1, 1, 1, 1, 1, 1],
    /* CW */ [-1, -1, 1, 1, 1, 1],
    /* PR */ [-1, -1, -1, 1, 1, 1],
    /* PW */ [0, 0, 0, 0, 0, 1],
    /* EX */ [0, 0, 0, 0, 0, 0],
];

/// What a grant does with the value block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LvbOp {
    Read,
    Write,
    None,
}

impl Mode {
    /// All modes, weakest first.
    pub const ALL: [Mode; 6] = [Mode::Nl, Mode::Cr, Mode::Cw, Mode::Pr, Mode::Pw, Mode::Ex];

    /// Whether a lock granted in `self` lets another be granted in `other`.
    pub fn compatible(self, other: Mode) -> bool {
        COMPAT[self as usize][other as usize]
    }

    /// The mode with this wire number.
    pub fn from_u8(v: u8) -> Option<Mode> {
        Mode::ALL.get(v as usize).copied()
    }

    /// Short upper-case name, as `dlm_tool` prints it.
    pub fn name(self) -> &'static str {
        ["NL", "CR", "CW", "PR", "PW", "EX"][self as usize]
    }

    /// Parse "NL".."EX" (any case).
    pub fn parse(s: &str) -> Option<Mode> {
        Mode::ALL.into_iter().find(|m| m.name().eq_ignore_ascii_case(s))
    }

    pub(crate) fn quecvt_ok(granted: Mode, requested: Mode) -> bool {
        QUECVT_OK[granted as usize][requested as usize]
    }

    pub(crate) fn lvb_op(granted: Option<Mode>, requested: Mode) -> LvbOp {
        let row = granted.map_or(0, |g| g as usize + 1);
        match LVB_OPS[row][requested as usize] {
            1 => LvbOp::Read,
            0 => LvbOp::Write,
            _ => LvbOp::None,
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Request flags (`DLM_LKF_*`), a bit set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Flags(pub u32);

impl Flags {
    /// Fail at once with [`Status::WouldBlock`] instead of queueing.
    pub const NOQUEUE: Flags = Flags(0x1);
    /// Cancel a queued request or conversion (on unlock).
    pub const CANCEL: Flags = Flags(0x2);
    /// This request converts an existing lock.
    pub const CONVERT: Flags = Flags(0x4);
    /// Read/write the lock value block.
    pub const VALBLK: Flags = Flags(0x8);
    /// Queue a conversion behind other conversions even if it could be granted now.
    pub const QUECVT: Flags = Flags(0x10);
    /// Invalidate the value block (instead of writing it) on down-conversion or unlock.
    pub const IVVALBLK: Flags = Flags(0x20);
    /// Resolve a conversion deadlock by demoting this lock's granted mode to NL.
    pub const CONVDEADLK: Flags = Flags(0x40);
    /// Keep the lock (as an orphan) when its owner goes away.
    pub const PERSISTENT: Flags = Flags(0x80);
    /// Grant an NL request at once, ahead of any queue.
    pub const EXPEDITE: Flags = Flags(0x400);
    /// Adopt an orphaned persistent lock of the same name and mode.
    pub const ORPHAN: Flags = Flags(0x4000);
    /// Grant in PR if the requested mode cannot be granted but PR can.
    pub const ALTPR: Flags = Flags(0x8000);
    /// Grant in CW if the requested mode cannot be granted but CW can.
    pub const ALTCW: Flags = Flags(0x10000);
    /// Every flag this implementation knows.
    pub const KNOWN: Flags = Flags(0x1_c4ff);

    /// No flags.
    pub const fn empty() -> Flags {
        Flags(0)
    }

    /// Whether every bit of `other` is set.
    pub const fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }

    /// Union.
    pub const fn union(self, other: Flags) -> Flags {
        Flags(self.0 | other.0)
    }

    /// Without the bits of `other`.
    pub const fn without(self, other: Flags) -> Flags {
        Flags(self.0 & !other.0)
    }

    /// Parse a comma-separated list such as "NOQUEUE,VALBLK" (case-insensitive).
    pub fn parse_list(s: &str) -> Option<Flags> {
        let mut f = Flags::empty();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (_, v) = FLAG_NAMES.iter().find(|(n, _)| n.eq_ignore_ascii_case(part))?;
            f = f.union(*v);
        }
        Some(f)
    }
}

const FLAG_NAMES: [(&str, Flags); 12] = [
    ("NOQUEUE", Flags::NOQUEUE),
    ("CANCEL", Flags::CANCEL),
    ("CONVERT", Flags::CONVERT),
    ("VALBLK", Flags::VALBLK),
    ("QUECVT", Flags::QUECVT),
    ("IVVALBLK", Flags::IVVALBLK),
    ("CONVDEADLK", Flags::CONVDEADLK),
    ("PERSISTENT", Flags::PERSISTENT),
    ("EXPEDITE", Flags::EXPEDITE),
    ("ORPHAN", Flags::ORPHAN),
    ("ALTPR", Flags::ALTPR),
    ("ALTCW", Flags::ALTCW),
];

impl std::ops::BitOr for Flags {
    type Output = Flags;
    fn bitor(self, rhs: Flags) -> Flags {
        self.union(rhs)
    }
}

/// Status-block flags returned with a completion (`DLM_SBF_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SbFlags(pub u8);

impl SbFlags {
    /// The granted mode was demoted to NL to resolve a conversion deadlock (CONVDEADLK).
    pub const DEMOTED: SbFlags = SbFlags(0x1);
    /// The value block cannot be trusted (a holder failed or IVVALBLK was used).
    pub const VALNOTVALID: SbFlags = SbFlags(0x2);
    /// The lock was granted in the alternate mode (ALTPR/ALTCW).
    pub const ALTMODE: SbFlags = SbFlags(0x4);

    /// Whether every bit of `other` is set.
    pub const fn contains(self, other: SbFlags) -> bool {
        self.0 & other.0 == other.0
    }

    pub(crate) fn set(&mut self, other: SbFlags) {
        self.0 |= other.0;
    }
}

/// The outcome carried by a completion callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// The request or conversion was granted.
    Granted,
    /// NOQUEUE was given and the lock could not be granted at once (`-EAGAIN`).
    WouldBlock,
    /// The conversion would deadlock with another conversion (`-EDEADLK`).
    Deadlock,
    /// The lock was released (`-DLM_EUNLOCK`).
    Unlocked,
    /// The queued request or conversion was cancelled (`-DLM_ECANCEL`).
    Canceled,
    /// The request was refused as invalid (`-EINVAL`): bad mode, flags or lock id.
    Invalid,
    /// ORPHAN found no orphan to adopt (`-ENOENT`).
    NotFound,
}

/// `DLM_EUNLOCK`, the completion status of an unlock in the Linux user API.
pub const DLM_EUNLOCK: i32 = 0x10002;
/// `DLM_ECANCEL`, the completion status of a cancel in the Linux user API.
pub const DLM_ECANCEL: i32 = 0x10001;

impl Status {
    /// The one mapping from statuses to wire/user codes (0 or a negative errno / DLM code).
    pub fn code(self) -> i32 {
        match self {
            Status::Granted => 0,
            Status::WouldBlock => -11,
            Status::Deadlock => -35,
            Status::Unlocked => -DLM_EUNLOCK,
            Status::Canceled => -DLM_ECANCEL,
            Status::Invalid => -22,
            Status::NotFound => -2,
        }
    }

    /// The inverse of [`Status::code`].
    pub fn from_code(code: i32) -> Option<Status> {
        [
            Status::Granted,
            Status::WouldBlock,
            Status::Deadlock,
            Status::Unlocked,
            Status::Canceled,
            Status::Invalid,
            Status::NotFound,
        ]
        .into_iter()
        .find(|s| s.code() == code)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Granted => "granted",
            Status::WouldBlock => "would block (EAGAIN)",
            Status::Deadlock => "conversion deadlock (EDEADLK)",
            Status::Unlocked => "unlocked",
            Status::Canceled => "canceled",
            Status::Invalid => "invalid request (EINVAL)",
            Status::NotFound => "no orphan to adopt (ENOENT)",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compat_is_symmetric_and_nl_is_universal() {
        for a in Mode::ALL {
            assert!(Mode::Nl.compatible(a));
            for b in Mode::ALL {
                assert_eq!(a.compatible(b), b.compatible(a), "{a} {b}");
            }
        }
        assert!(!Mode::Ex.compatible(Mode::Cr));
        assert!(Mode::Pr.compatible(Mode::Pr));
        assert!(!Mode::Pr.compatible(Mode::Cw));
        assert!(Mode::Cw.compatible(Mode::Cw));
        assert!(!Mode::Pw.compatible(Mode::Pw));
    }

    #[test]
    fn status_codes_round_trip() {
        for s in [Status::Granted, Status::WouldBlock, Status::Deadlock, Status::Unlocked, Status::Canceled] {
            assert_eq!(Status::from_code(s.code()), Some(s));
        }
        assert_eq!(Status::from_code(12345), None);
    }

    #[test]
    fn flags_parse() {
        assert_eq!(Flags::parse_list("noqueue, VALBLK"), Some(Flags::NOQUEUE | Flags::VALBLK));
        assert_eq!(Flags::parse_list(""), Some(Flags::empty()));
        assert_eq!(Flags::parse_list("BOGUS"), None);
        assert!(Flags::KNOWN.contains(Flags::ALTCW | Flags::EXPEDITE | Flags::NOQUEUE | Flags::ORPHAN));
    }
}
