//! gfs_fsck (skeleton; being built).
#![forbid(unsafe_code)]
