//! The devices a filesystem lives on: the `blockdev` crate (files, block devices, `gnbd://`
//! exports, in-memory and fault-injecting devices), and `lvm:VG/LV` volumes through clvm's
//! mapping layer (no activation needed).

pub use blockdev::*;
use std::sync::Arc;

/// Opens a device by name: `lvm:VG/LV` through clvm, `gnbd://...` through the client library,
/// anything else as a path.
pub fn open_device(spec: &str) -> Result<Arc<dyn Device>, DeviceError> {
    if spec.starts_with(clvm::activate::LVM_PREFIX) {
        return clvm::activate::open_lv(spec)
            .map_err(|reason| DeviceError::Open { spec: spec.into(), source: std::io::Error::other(reason) });
    }
    blockdev::open_device(spec)
}
