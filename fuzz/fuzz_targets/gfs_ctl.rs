//! The control request `gfs_grow` and `gfs_jadd` send to a mount (any local user who can open
//! the mount point can send these bytes) and the reply: decoding never panics, and whatever
//! decodes re-encodes to bytes that decode the same.
#![no_main]

use gfs::grow::{CtlReply, CtlRequest, CTL_SIZE};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = CtlRequest::decode(data);
    let _ = CtlReply::decode(data);
    let mut b = vec![0u8; CTL_SIZE];
    let n = data.len().min(CTL_SIZE);
    b[..n].copy_from_slice(&data[..n]);
    if let Ok(r) = CtlRequest::decode(&b) {
        assert_eq!(CtlRequest::decode(&r.encode()), Ok(r));
    }
    if let Ok(r) = CtlReply::decode(&b) {
        assert_eq!(CtlReply::decode(&r.encode()).as_ref(), Ok(&r));
    }
});
