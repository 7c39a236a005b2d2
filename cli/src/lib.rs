//! `tether`: the service-side client and the standalone tools.
//!
//! * [`connect`]: open streams through a relay (`--stdio` for ssh, `--listen` for port forwards).
//! * [`standalone`]: file-based CA, token key, device credentials and tokens (no cluster).
//! * [`demo`]: relay + agent + target on loopback, the README's first command.
//! * [`args`]: the command line.

#![forbid(unsafe_code)]

pub mod args;
pub mod connect;
pub mod demo;
pub mod standalone;
pub mod testbed;
