//! Command-line arguments, each also settable through an environment variable.

use std::{net::SocketAddr, time::Duration};

/// `tether-operator` arguments.
#[derive(Clone, Debug, clap::Parser)]
#[command(
    name = "tether-operator",
    version,
    about = "Reconciles Tether Device, DeviceStream and RelayPool resources"
)]
pub struct Args {
    /// Namespace the operator runs in: trust anchors, the Lease and RelayPools live here.
    #[arg(long, env = "TETHER_NAMESPACE", default_value = "tether-system")]
    pub namespace: String,
    /// Only watch Devices and DeviceStreams in this namespace (default: all namespaces).
    #[arg(long, env = "TETHER_WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,
    /// SPIFFE trust domain of device identities.
    #[arg(long, env = "TETHER_TRUST_DOMAIN", default_value = "tether.local")]
    pub trust_domain: String,
    /// Admin listener: `/metrics`, `/ready`, `/live`.
    #[arg(long, env = "TETHER_ADMIN_ADDR", default_value = "0.0.0.0:8080")]
    pub admin_addr: SocketAddr,
    /// Name of the leader-election Lease.
    #[arg(long, env = "TETHER_LEASE_NAME", default_value = "tether-operator")]
    pub lease_name: String,
    /// This replica's identity in the Lease (the pod name).
    #[arg(long, env = "POD_NAME", default_value = "tether-operator")]
    pub identity: String,
    /// How long a Lease stays valid without renewal: a standby takes over this long after the
    /// leader's last successful renewal. Whole seconds (the Lease stores seconds).
    #[arg(long, env = "TETHER_LEASE_DURATION", default_value = "15s", value_parser = crate::duration::parse)]
    pub lease_duration: Duration,
    /// How long the leader keeps reconciling without a successful renewal; then it stops its
    /// controllers and exits. Must be shorter than `--lease-duration`, so the leader has stopped
    /// before any standby can take over. Default: two thirds of the lease duration (client-go's
    /// 10 s of 15 s).
    #[arg(long, env = "TETHER_RENEW_DEADLINE", value_parser = crate::duration::parse)]
    pub renew_deadline: Option<Duration>,
    /// How often the leader renews and a standby tries to acquire the Lease; also the timeout of
    /// each attempt. Must be shorter than `--renew-deadline`. Default: 2/15 of the lease duration
    /// (client-go's 2 s of 15 s).
    #[arg(long, env = "TETHER_RETRY_PERIOD", value_parser = crate::duration::parse)]
    pub retry_period: Option<Duration>,
    /// How often to retry loading trust anchors that are malformed or unreadable.
    #[arg(long, env = "TETHER_TRUST_RETRY", default_value = "30s", value_parser = crate::duration::parse)]
    pub trust_retry: Duration,
    /// Controllers to run (comma-separated; default all). Tests run subsets side by side.
    #[arg(
        long,
        env = "TETHER_CONTROLLERS",
        value_delimiter = ',',
        default_value = "device,devicestream,relaypool"
    )]
    pub controllers: Vec<Controller>,
}

/// A controller the operator can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Controller {
    /// Device credentials.
    Device,
    /// DeviceStream tokens.
    #[value(name = "devicestream")]
    DeviceStream,
    /// RelayPool fleet and autoscaling.
    #[value(name = "relaypool")]
    RelayPool,
}

impl Args {
    /// The leader-election timing (defaults in client-go's proportions of `--lease-duration`),
    /// checked: `retry period < renew deadline < lease duration`,
    /// the lease duration a whole number of seconds of at least 1 s.
    ///
    /// # Errors
    /// A message naming the flags that break the order.
    pub fn lease_timing(&self) -> Result<crate::lease::LeaseTiming, String> {
        let lease = self.lease_duration;
        crate::lease::LeaseTiming::new(
            lease,
            self.renew_deadline.unwrap_or(lease * 2 / 3),
            self.retry_period.unwrap_or(lease * 2 / 15),
        )
    }

    /// Whether `controller` is enabled.
    pub fn runs(&self, controller: Controller) -> bool {
        self.controllers.contains(&controller)
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory as _, Parser as _};

    use super::*;

    #[test]
    fn verify_cli_and_lease_defaults() {
        Args::command().debug_assert();
        let t = Args::parse_from(["tether-operator"]).lease_timing().unwrap();
        let s = Duration::from_secs;
        assert_eq!(
            (t.duration, t.renew_deadline, t.retry_period),
            (s(15), s(10), s(2))
        );
        let t = Args::parse_from(["tether-operator", "--lease-duration", "30s"])
            .lease_timing()
            .unwrap();
        assert_eq!((t.renew_deadline, t.retry_period), (s(20), s(4)));
        let bad = Args::parse_from(["tether-operator", "--renew-deadline", "15s"]);
        assert!(bad.lease_timing().is_err());
    }
}
