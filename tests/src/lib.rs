//! Tether's end-to-end test support: [`testenv`] attaches to the real Kubernetes control plane
//! started by `scripts/k8s-env.sh` (see `docs/testing.md`); [`sshd`] runs a real OpenSSH server.
#![forbid(unsafe_code)]

pub mod sshd;
pub mod testenv;
