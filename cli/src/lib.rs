//! `tether`: the service-side client and the standalone tools.
//!
//! * [`connect`]: open streams through a relay (`--stdio` for ssh, `--listen` for port forwards).
//! * [`mux`]: the multiplexed (HTTP/2) service connection `--listen` opens its streams on.
//! * [`standalone`]: file-based CA, token key, device credentials and tokens (no cluster).
//! * `demo` (feature `demo`, default): relay + agent + target on loopback, the README's first
//!   command; `testbed` is its in-process setup, shared with tests and the benchmark.
//! * [`args`]: the command line.

#![forbid(unsafe_code)]

pub mod args;
pub mod connect;
#[cfg(feature = "demo")]
pub mod demo;
pub mod mux;
pub mod standalone;
#[cfg(feature = "demo")]
pub mod testbed;
