//! gfs (skeleton; being built).
#![forbid(unsafe_code)]
