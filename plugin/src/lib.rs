//! `kubectl tether`: Tether from a kubeconfig. Creates DeviceStreams, waits for the operator to
//! make them Ready (a watch, not polling), reads their token Secret over the API (never to disk
//! or argv) and opens the tunnel with `tether-cli`'s client.
//!
//! * [`args`]: the command line (kubectl's `--kubeconfig`, `--context`, `-n`).
//! * [`cluster`]: the API client from the kubeconfig, and API errors a person can act on.
//! * [`stream`]: the DeviceStream lifecycle: create, wait for Ready, token, delete.
//! * [`ssh`], [`forward`], [`connect`]: the three ways to use a stream.
//! * [`device`]: enrolment and the credentials bundle for an agent.
//! * [`table`]: `devices` and `streams`, like `kubectl get`.

#![forbid(unsafe_code)]

pub mod args;
pub mod cluster;
pub mod connect;
pub mod device;
pub mod error;
pub mod forward;
pub mod ssh;
pub mod stream;
pub mod table;

pub use error::{Error, Result};

/// Runs a parsed command line; returns the process exit code.
///
/// # Errors
/// Whatever the command fails with; `main` prints it on one line.
pub async fn run(cli: args::Cli) -> Result<u8> {
    let args::Cli { kube, command } = cli;
    let cluster = cluster::Cluster::connect(&kube).await?;
    match command {
        args::Command::Ssh(a) => ssh::run(&cluster, a).await,
        args::Command::PortForward(a) => forward::run(&cluster, a).await.map(|()| 0),
        args::Command::Connect(a) => connect::run(&cluster, a).await.map(|()| 0),
        args::Command::Device(args::DeviceCommand::Enroll(a)) => {
            device::enroll(&cluster, a).await.map(|()| 0)
        }
        args::Command::Device(args::DeviceCommand::Credentials(a)) => {
            device::credentials(&cluster, a).await.map(|()| 0)
        }
        args::Command::Devices(a) => table::devices(&cluster, a).await.map(|()| 0),
        args::Command::Streams(a) => table::streams(&cluster, a).await.map(|()| 0),
    }
}
