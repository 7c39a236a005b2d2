//! Condition types, reasons and statuses shared by every resource, as grouped constants.

/// Condition types.
pub mod types {
    /// The resource is usable (the summary condition shown by `kubectl get`).
    pub const READY: &str = "Ready";
    /// Device: its client certificate Secret is issued and current.
    pub const CREDENTIALS_ISSUED: &str = "CredentialsIssued";
    /// DeviceStream: its token is minted.
    pub const TOKEN_ISSUED: &str = "TokenIssued";
}

/// Condition statuses.
pub mod status {
    /// The condition holds.
    pub const TRUE: &str = "True";
    /// The condition does not hold.
    pub const FALSE: &str = "False";
    /// Not yet known.
    pub const UNKNOWN: &str = "Unknown";
}

/// Reasons (CamelCase, stable: alerts and scripts match on them).
pub mod reasons {
    /// Everything is in order.
    pub const READY: &str = "Ready";
    /// Credentials were issued or renewed.
    pub const ISSUED: &str = "Issued";
    /// The Device is disabled by its spec.
    pub const DEVICE_DISABLED: &str = "DeviceDisabled";
    /// The DeviceStream names a Device that does not exist.
    pub const DEVICE_NOT_FOUND: &str = "DeviceNotFound";
    /// The DeviceStream's port is not in the Device's allowed ports.
    pub const PORT_NOT_ALLOWED: &str = "PortNotAllowed";
    /// The DeviceStream's TTL has passed.
    pub const EXPIRED: &str = "Expired";
    /// A trust anchor Secret (CA or token key) exists but is malformed.
    pub const TRUST_ANCHOR_INVALID: &str = "TrustAnchorInvalid";
    /// No RelayPool exists to serve streams.
    pub const NO_RELAY_POOL: &str = "NoRelayPool";
    /// The relay fleet has fewer ready members than desired.
    pub const SCALING: &str = "Scaling";
    /// The spec is invalid in a way the schema cannot express.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// RelayPool: outside the operator's namespace, so refused (no certificate, no children):
    /// whoever obtains a relay serving certificate can impersonate the relay to every agent.
    pub const WRONG_NAMESPACE: &str = "WrongNamespace";
    /// RelayPool: another (older) pool already serves this relay domain.
    pub const RELAY_DOMAIN_CONFLICT: &str = "RelayDomainConflict";
    /// RelayPool: an object with a child's name exists and is not owned by this pool; the
    /// operator does not take it over.
    pub const CHILD_CONFLICT: &str = "ChildConflict";
}
