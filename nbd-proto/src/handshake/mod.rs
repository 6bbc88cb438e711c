//! Fixed-newstyle handshake state machines for both ends of the connection.

pub mod client;
pub mod server;

#[cfg(test)]
mod tests;
