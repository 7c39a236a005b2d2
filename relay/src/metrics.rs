//! The relay's Prometheus metrics, registered in one explicit [`Registry`].
//!
//! No label carries a device or stream ID (cardinality); refusals are labelled by side and a
//! fixed reason vocabulary.

use crate::reason::{Cut, Reason};
use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry, exponential_buckets,
};

/// Which party a failure is attributed to (pingora's upstream/downstream/internal split).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The device agent.
    Device,
    /// The service client.
    Service,
    /// Not yet known (before ALPN).
    Unknown,
    /// The relay itself.
    Internal,
}

impl Side {
    /// The metric label value.
    pub fn label(self) -> &'static str {
        match self {
            Self::Device => "device",
            Self::Service => "service",
            Self::Unknown => "unknown",
            Self::Internal => "internal",
        }
    }
}

/// All relay metrics.
#[derive(Clone)]
pub struct Metrics {
    /// Bytes carried from services to devices.
    pub bytes_to_device: IntCounter,
    /// Bytes carried from devices to services.
    pub bytes_to_service: IntCounter,
    /// Tunnelled connections currently spliced.
    pub active_streams: IntGauge,
    /// Stream setups by result (`ok` or a refusal reason).
    pub stream_setups: IntCounterVec,
    /// Time from the service's request head to the relay's 200, for successful setups.
    pub setup_seconds: Histogram,
    /// Devices with a live session on this relay.
    pub connected_devices: IntGauge,
    /// Connections that failed before becoming a device session or a stream, by side and reason.
    pub handshake_failures: IntCounterVec,
    /// Connections currently in their handshake phase.
    pub pending_handshakes: IntGauge,
    /// TCP connections admitted on the data port (each costs a TLS handshake).
    pub connections_accepted: IntCounter,
    /// Open multiplexed (HTTP/2) service connections.
    pub multiplexed_connections: IntGauge,
    /// Device sessions replaced by a reconnect of the same device.
    pub sessions_replaced: IntCounter,
    /// Established connections the relay ended, by reason (`revoked`, `idle_timeout`,
    /// `relay_shutdown`).
    pub streams_cut: IntCounterVec,
    /// Connections forwarded to their owner (`role="sent"`) or received on the peer port
    /// (`role="received"`).
    pub forwarded_connections: IntCounterVec,
    /// Bytes this relay carried for connections it forwarded to the owner.
    pub forwarded_to_owner: IntCounter,
    /// Bytes this relay carried back from the owner for connections it forwarded.
    pub forwarded_from_owner: IntCounter,
    /// Connections that could not be forwarded, by reason.
    pub forward_failures: IntCounterVec,
    /// Members of the ring as this relay sees it.
    pub ring_members: IntGauge,
    /// Changes of the ring's member set.
    pub ring_changes: IntCounter,
    /// Devices told to reconnect (GOAWAY) because another member owns them now.
    pub devices_moved: IntCounter,
    /// 1 while the relay drains (after SIGTERM).
    pub draining: IntGauge,
}

impl Metrics {
    /// Creates the metrics and registers them in `registry`.
    ///
    /// # Errors
    /// When a metric with the same name is already registered.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let bytes = IntCounterVec::new(
            Opts::new(
                "tether_relay_bytes_total",
                "Bytes relayed through tunnels, by direction.",
            ),
            &["direction"],
        )?;
        let forwarded_bytes = IntCounterVec::new(
            Opts::new(
                "tether_relay_forwarded_bytes_total",
                "Bytes of connections this relay forwarded to their owner, by direction.",
            ),
            &["direction"],
        )?;
        let m = Self {
            bytes_to_device: bytes.with_label_values(&["service_to_device"]),
            bytes_to_service: bytes.with_label_values(&["device_to_service"]),
            active_streams: IntGauge::new(
                "tether_relay_active_streams",
                "Tunnelled connections currently open.",
            )?,
            stream_setups: IntCounterVec::new(
                Opts::new(
                    "tether_relay_stream_setups_total",
                    "Stream setups by result (ok or refusal reason).",
                ),
                &["result"],
            )?,
            setup_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "tether_relay_stream_setup_duration_seconds",
                    "Time from a service's request to the relay's answer, for successful setups.",
                )
                // 50 µs .. ~3.3 s: loopback setups take ~100 µs, WAN devices up to seconds.
                .buckets(exponential_buckets(0.000_05, 2.0, 17)?),
            )?,
            connected_devices: IntGauge::new(
                "tether_relay_connected_devices",
                "Devices with a live session.",
            )?,
            handshake_failures: IntCounterVec::new(
                Opts::new(
                    "tether_relay_handshake_failures_total",
                    "Connections refused or failed during the handshake, by side and reason.",
                ),
                &["side", "reason"],
            )?,
            pending_handshakes: IntGauge::new(
                "tether_relay_pending_handshakes",
                "Connections currently in their TLS/preface/request handshake.",
            )?,
            connections_accepted: IntCounter::new(
                "tether_relay_connections_accepted_total",
                "TCP connections admitted on the data port (devices and services; each pays a TLS handshake).",
            )?,
            multiplexed_connections: IntGauge::new(
                "tether_relay_multiplexed_connections",
                "Open HTTP/2 service connections (each carries many tunnelled connections).",
            )?,
            sessions_replaced: IntCounter::new(
                "tether_relay_device_sessions_replaced_total",
                "Device sessions replaced by a newer connection of the same device.",
            )?,
            streams_cut: IntCounterVec::new(
                Opts::new(
                    "tether_relay_streams_closed_by_relay_total",
                    "Established tunnelled connections the relay closed, by reason.",
                ),
                &["reason"],
            )?,
            forwarded_connections: IntCounterVec::new(
                Opts::new(
                    "tether_relay_forwarded_connections_total",
                    "Connections forwarded at layer 4: sent to their owner, or received on the peer port.",
                ),
                &["role"],
            )?,
            forwarded_to_owner: forwarded_bytes.with_label_values(&["to_owner"]),
            forwarded_from_owner: forwarded_bytes.with_label_values(&["from_owner"]),
            forward_failures: IntCounterVec::new(
                Opts::new(
                    "tether_relay_forward_failures_total",
                    "Connections that could not be forwarded to their owner, by reason.",
                ),
                &["reason"],
            )?,
            ring_members: IntGauge::new(
                "tether_relay_ring_members",
                "Relays in the hash ring as this relay sees it (0: standalone, serves every device).",
            )?,
            ring_changes: IntCounter::new(
                "tether_relay_ring_changes_total",
                "Changes of the hash ring's member set.",
            )?,
            devices_moved: IntCounter::new(
                "tether_relay_devices_moved_total",
                "Device sessions sent GOAWAY because another relay owns the device now.",
            )?,
            draining: IntGauge::new("tether_relay_draining", "1 while the relay drains after SIGTERM.")?,
        };
        // Known label values start at 0, so rate() shows a flat line rather than no data.
        for reason in Cut::ALL {
            m.streams_cut.with_label_values(&[reason.as_str()]);
        }
        m.stream_setups.with_label_values(&["ok"]);
        registry.register(Box::new(bytes))?;
        registry.register(Box::new(forwarded_bytes))?;
        registry.register(Box::new(m.forwarded_connections.clone()))?;
        registry.register(Box::new(m.forward_failures.clone()))?;
        registry.register(Box::new(m.ring_members.clone()))?;
        registry.register(Box::new(m.ring_changes.clone()))?;
        registry.register(Box::new(m.devices_moved.clone()))?;
        registry.register(Box::new(m.draining.clone()))?;
        registry.register(Box::new(m.active_streams.clone()))?;
        registry.register(Box::new(m.stream_setups.clone()))?;
        registry.register(Box::new(m.setup_seconds.clone()))?;
        registry.register(Box::new(m.connected_devices.clone()))?;
        registry.register(Box::new(m.handshake_failures.clone()))?;
        registry.register(Box::new(m.pending_handshakes.clone()))?;
        registry.register(Box::new(m.connections_accepted.clone()))?;
        registry.register(Box::new(m.multiplexed_connections.clone()))?;
        registry.register(Box::new(m.sessions_replaced.clone()))?;
        registry.register(Box::new(m.streams_cut.clone()))?;
        let info = IntGauge::with_opts(
            Opts::new("tether_relay_build_info", "Build information.")
                .const_label("version", env!("CARGO_PKG_VERSION")),
        )?;
        info.set(1);
        registry.register(Box::new(info))?;
        Ok(m)
    }

    /// Counts a handshake failure.
    pub fn handshake_failed(&self, side: Side, reason: Reason) {
        self.handshake_failures
            .with_label_values(&[side.label(), reason.as_str()])
            .inc();
    }
}
