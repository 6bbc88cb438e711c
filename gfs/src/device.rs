//! The devices a filesystem lives on: the `blockdev` crate (files, block devices, `gnbd://`
//! exports, in-memory and fault-injecting devices), and `lvm:VG/LV` volumes through clvm.

pub use blockdev::*;
