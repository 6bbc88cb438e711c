//! lvs (skeleton; being built).
#![forbid(unsafe_code)]
