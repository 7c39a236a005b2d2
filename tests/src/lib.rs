//! Tether's end-to-end test support: [`testenv`] attaches to the real Kubernetes control plane
//! started by `scripts/k8s-env.sh` (see `docs/testing.md`).
#![forbid(unsafe_code)]

pub mod testenv;
