//! Errors of `kubectl tether`, each saying what to do about it.

use std::time::Duration;

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, phrased for the person at the terminal.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kubeconfig could not be loaded or has no usable context.
    #[error("cannot use the kubeconfig: {0}")]
    Kubeconfig(String),
    /// RBAC refused a request.
    #[error(
        "RBAC denied: you may not {verb} {resource} in namespace {namespace:?} (a RoleBinding to \
         the {role} ClusterRole grants it; see docs/operations.md). The API server said: {message}"
    )]
    Forbidden {
        /// The verb, e.g. `create`.
        verb: &'static str,
        /// The resource, e.g. `devicestreams.tether.dev`.
        resource: &'static str,
        /// The namespace.
        namespace: String,
        /// The shipped ClusterRole that grants it.
        role: &'static str,
        /// The API server's message.
        message: String,
    },
    /// The Device does not exist.
    #[error(
        "Device {name:?} does not exist in namespace {namespace:?} (`kubectl tether devices -n {namespace}` \
         lists them; `kubectl tether device enroll {name} --allow PORTS` creates it)"
    )]
    DeviceNotFound {
        /// Device name.
        name: String,
        /// Namespace.
        namespace: String,
    },
    /// The Device is disabled.
    #[error(
        "Device {name:?} in namespace {namespace:?} is disabled (spec.disabled); a device admin must enable it"
    )]
    DeviceDisabled {
        /// Device name.
        name: String,
        /// Namespace.
        namespace: String,
    },
    /// The port is not in the Device's allowed ports.
    #[error(
        "port {port} is not allowed on Device {name:?} (spec.allowedPorts: {allowed:?}); use one of those \
         or ask a device admin to run `kubectl tether device enroll {name} --allow ...`"
    )]
    PortNotAllowed {
        /// Device name.
        name: String,
        /// Requested port.
        port: u16,
        /// The Device's allowed ports.
        allowed: Vec<i32>,
    },
    /// The operator could not serve the DeviceStream.
    #[error("DeviceStream {name} failed ({reason}): {message}")]
    StreamFailed {
        /// Stream name.
        name: String,
        /// The `Ready` condition's reason.
        reason: String,
        /// The `Ready` condition's message.
        message: String,
    },
    /// The DeviceStream's TTL has passed.
    #[error("DeviceStream {name} has expired (its TTL passed); run the command again for a new stream")]
    StreamExpired {
        /// Stream name.
        name: String,
    },
    /// The DeviceStream disappeared.
    #[error("DeviceStream {name} was deleted (revoked) before it could be used")]
    StreamDeleted {
        /// Stream name.
        name: String,
    },
    /// The DeviceStream does not exist.
    #[error(
        "DeviceStream {name:?} does not exist in namespace {namespace:?} (`kubectl tether streams` lists them)"
    )]
    StreamNotFound {
        /// Stream name.
        name: String,
        /// Namespace.
        namespace: String,
    },
    /// The operator did not act in time.
    #[error("{what} after {after:?}: {message}")]
    Timeout {
        /// What did not happen.
        what: String,
        /// How long we waited.
        after: Duration,
        /// The last thing the operator said, or a hint.
        message: String,
    },
    /// No RelayPool: there is no relay endpoint to give a device.
    #[error(
        "no relay endpoint for Device {name:?}: no RelayPool exists in the operator's namespace yet \
         (an admin creates one: see docs/operations.md), then run this again"
    )]
    NoRelayPool {
        /// Device name.
        name: String,
    },
    /// The relay could not be reached.
    #[error(
        "relay {relay} is unreachable: {message} (is the RelayPool's public Service reachable from here? \
         HTTPS_PROXY is honoured)"
    )]
    RelayUnreachable {
        /// `host:port`.
        relay: String,
        /// The I/O error.
        message: String,
    },
    /// The stream's token has expired.
    #[error(
        "the stream token has expired (DeviceStream TTL passed); run the command again, with a longer --ttl if needed"
    )]
    TokenExpired,
    /// The relay refused or the tunnel failed for another reason.
    #[error(transparent)]
    Connect(#[from] tether_cli::connect::ConnectError),
    /// A Secret or object from the API is not what the operator writes.
    #[error("{0}")]
    Malformed(String),
    /// A bad argument the parser could not catch.
    #[error("{0}")]
    Usage(String),
    /// Another Kubernetes API error.
    #[error("cannot {action}: {source}")]
    Api {
        /// What we tried.
        action: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Local I/O (files, sockets, running ssh).
    #[error("{what}: {source}")]
    Io {
        /// What we tried.
        what: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// An I/O error while doing `what`.
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.into();
        move |source| Self::Io { what, source }
    }

    /// A connection error, translated where we know what it means for the user.
    pub fn from_connect(e: tether_cli::connect::ConnectError) -> Self {
        use tether_cli::connect::ConnectError as C;
        match e {
            C::Dial { relay, source } => Self::RelayUnreachable {
                relay,
                message: source.to_string(),
            },
            C::Refused { reason, .. } if reason == "token_expired" => Self::TokenExpired,
            other => Self::Connect(other),
        }
    }
}
