//! Object inventory metrics, computed at scrape time from the controllers' reflector stores
//! (kube-state-metrics style): DeviceStreams by phase, Devices by readiness, and the earliest
//! device certificate expiry. Nothing is counted per object in a label (cardinality): a fleet of
//! 100,000 devices is still three small metric families.

use std::sync::Mutex;

use kube::{core::DeserializeGuard, runtime::reflector::Store};
use prometheus::{
    IntGaugeVec, Opts,
    core::{Collector, Desc},
    proto::MetricFamily,
};
use tether_api::{
    Device, DeviceStream, StreamPhase,
    conditions::{status, types},
};

/// Phase label values, in the order the DeviceStream lifecycle goes; `Unknown` is a stream the
/// operator has not given a status yet. Every value is always exported (zero included), so a
/// dashboard query for one phase has a series even when no stream is in it.
pub const PHASES: [&str; 6] = ["Pending", "Ready", "Active", "Expired", "Failed", "Unknown"];

/// What the stores hold, reduced to the numbers the metrics show.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Inventory {
    /// DeviceStreams per entry of [`PHASES`].
    pub streams: [i64; PHASES.len()],
    /// Devices whose `Ready` condition is `True`.
    pub devices_ready: i64,
    /// Devices without `Ready=True` (including ones not reconciled yet).
    pub devices_not_ready: i64,
    /// The earliest `status.certificateExpiresAt` over all Devices (Unix seconds).
    pub earliest_certificate_expiry: Option<i64>,
}

/// The label value of a stream phase.
pub fn phase_label(phase: Option<StreamPhase>) -> &'static str {
    match phase {
        Some(StreamPhase::Pending) => "Pending",
        Some(StreamPhase::Ready) => "Ready",
        Some(StreamPhase::Active) => "Active",
        Some(StreamPhase::Expired) => "Expired",
        Some(StreamPhase::Failed) => "Failed",
        None => "Unknown",
    }
}

impl Inventory {
    /// Counts `devices` and `streams` (objects that failed to deserialize are skipped: they have
    /// no status to count).
    pub fn of<'a>(
        devices: impl IntoIterator<Item = &'a Device>,
        streams: impl IntoIterator<Item = &'a DeviceStream>,
    ) -> Self {
        let mut inv = Self::default();
        for s in streams {
            let label = phase_label(s.status.as_ref().and_then(|st| st.phase));
            if let Some(i) = PHASES.iter().position(|p| *p == label) {
                inv.streams[i] += 1;
            }
        }
        for d in devices {
            let st = d.status.as_ref();
            let ready = st.is_some_and(|st| {
                st.conditions
                    .iter()
                    .any(|c| c.type_ == types::READY && c.status == status::TRUE)
            });
            if ready {
                inv.devices_ready += 1;
            } else {
                inv.devices_not_ready += 1;
            }
            if let Some(t) = st.and_then(|st| st.certificate_expires_at.as_ref()) {
                let secs = t.0.as_second();
                inv.earliest_certificate_expiry =
                    Some(inv.earliest_certificate_expiry.map_or(secs, |e| e.min(secs)));
            }
        }
        inv
    }
}

/// The collector registered once in the operator's registry; controllers hand it their stores
/// when they start ([`set_devices`](Self::set_devices), [`set_streams`](Self::set_streams)). A
/// standby replica has no stores and exports no inventory (only the leader's numbers are real).
pub struct InventoryCollector {
    devices: Mutex<Option<Store<DeserializeGuard<Device>>>>,
    streams: Mutex<Option<Store<DeserializeGuard<DeviceStream>>>>,
    stream_phases: IntGaugeVec,
    device_readiness: IntGaugeVec,
    earliest_expiry: IntGaugeVec,
}

impl InventoryCollector {
    /// Creates the collector with no stores.
    ///
    /// # Errors
    /// Only on invalid metric names (constants here).
    pub fn new() -> prometheus::Result<Self> {
        Ok(Self {
            devices: Mutex::new(None),
            streams: Mutex::new(None),
            stream_phases: IntGaugeVec::new(
                Opts::new(
                    "tether_operator_device_streams",
                    "DeviceStreams the operator watches, by status phase",
                ),
                &["phase"],
            )?,
            device_readiness: IntGaugeVec::new(
                Opts::new(
                    "tether_operator_devices",
                    "Devices the operator watches, by whether their Ready condition is True",
                ),
                &["ready"],
            )?,
            earliest_expiry: IntGaugeVec::new(
                Opts::new(
                    "tether_operator_device_certificate_earliest_expiry_timestamp_seconds",
                    "Earliest expiry (Unix time) of any Device's current client certificate",
                ),
                &[],
            )?,
        })
    }

    /// Starts reporting the Device controller's store.
    pub fn set_devices(&self, store: Store<DeserializeGuard<Device>>) {
        *self.devices.lock().unwrap_or_else(|p| p.into_inner()) = Some(store);
    }

    /// Starts reporting the DeviceStream controller's store.
    pub fn set_streams(&self, store: Store<DeserializeGuard<DeviceStream>>) {
        *self.streams.lock().unwrap_or_else(|p| p.into_inner()) = Some(store);
    }
}

impl Collector for InventoryCollector {
    fn desc(&self) -> Vec<&Desc> {
        [&self.stream_phases, &self.device_readiness, &self.earliest_expiry]
            .into_iter()
            .flat_map(|c| c.desc())
            .collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        // Holding both locks for the whole scrape also serialises concurrent scrapes, which
        // would otherwise interleave reset() and set() on the shared gauges.
        let devices = self.devices.lock().unwrap_or_else(|p| p.into_inner());
        let streams = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        self.stream_phases.reset();
        self.device_readiness.reset();
        self.earliest_expiry.reset();
        let device_objs = devices.as_ref().map(|s| s.state()).unwrap_or_default();
        let stream_objs = streams.as_ref().map(|s| s.state()).unwrap_or_default();
        let inv = Inventory::of(
            device_objs.iter().filter_map(|d| d.0.as_ref().ok()),
            stream_objs.iter().filter_map(|s| s.0.as_ref().ok()),
        );
        if streams.is_some() {
            for (phase, n) in PHASES.iter().zip(inv.streams) {
                self.stream_phases.with_label_values(&[phase]).set(n);
            }
        }
        if devices.is_some() {
            self.device_readiness
                .with_label_values(&["true"])
                .set(inv.devices_ready);
            self.device_readiness
                .with_label_values(&["false"])
                .set(inv.devices_not_ready);
            if let Some(t) = inv.earliest_certificate_expiry {
                self.earliest_expiry.with_label_values::<&str>(&[]).set(t);
            }
        }
        [&self.stream_phases, &self.device_readiness, &self.earliest_expiry]
            .into_iter()
            .flat_map(|c| c.collect())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::{
        apimachinery::pkg::apis::meta::v1::{Condition, Time},
        jiff::Timestamp,
    };
    use tether_api::{DeviceSpec, DeviceStatus, DeviceStreamSpec, DeviceStreamStatus};

    use super::*;

    fn device(ready: Option<&str>, expires: Option<i64>) -> Device {
        let mut d = Device::new(
            "d",
            serde_json::from_value::<DeviceSpec>(serde_json::json!({"allowedPorts": [22]})).unwrap(),
        );
        d.status = Some(DeviceStatus {
            certificate_expires_at: expires.map(|s| Time(Timestamp::from_second(s).unwrap())),
            conditions: ready
                .map(|s| Condition {
                    type_: types::READY.into(),
                    status: s.into(),
                    reason: "R".into(),
                    message: String::new(),
                    last_transition_time: Time(Timestamp::UNIX_EPOCH),
                    observed_generation: None,
                })
                .into_iter()
                .collect(),
            ..DeviceStatus::default()
        });
        d
    }

    fn stream(phase: Option<StreamPhase>) -> DeviceStream {
        let spec: DeviceStreamSpec =
            serde_json::from_value(serde_json::json!({"device": "d", "port": 22})).unwrap();
        let mut s = DeviceStream::new("s", spec);
        s.status = phase.map(|p| DeviceStreamStatus {
            phase: Some(p),
            ..DeviceStreamStatus::default()
        });
        s
    }

    #[test]
    fn counts_phases_readiness_and_the_earliest_expiry() {
        let devices = [
            device(Some("True"), Some(2_000)),
            device(Some("False"), Some(1_500)),
            device(None, None),
        ];
        let streams = [
            stream(Some(StreamPhase::Ready)),
            stream(Some(StreamPhase::Ready)),
            stream(Some(StreamPhase::Failed)),
            stream(None),
        ];
        let inv = Inventory::of(&devices, &streams);
        assert_eq!(
            inv,
            Inventory {
                streams: [0, 2, 0, 0, 1, 1],
                devices_ready: 1,
                devices_not_ready: 2,
                earliest_certificate_expiry: Some(1_500),
            }
        );
    }

    fn named<K: kube::Resource>(mut k: K, name: &str) -> K {
        k.meta_mut().name = Some(name.into());
        k.meta_mut().namespace = Some("plant-a".into());
        k
    }

    /// The exposition a scrape sees, parsed: every phase present with its exact value, and no
    /// inventory at all before the controllers hand over their stores (a standby replica).
    #[test]
    fn the_collector_reads_the_stores_at_scrape_time() {
        use kube::runtime::{reflector, watcher::Event};
        let c = InventoryCollector::new().unwrap();
        assert!(c.collect().iter().all(|f| f.get_metric().is_empty()));

        let (devices, mut dw) = reflector::store::<DeserializeGuard<Device>>();
        let (streams, mut sw) = reflector::store::<DeserializeGuard<DeviceStream>>();
        dw.apply_watcher_event(&Event::Apply(DeserializeGuard(Ok(named(
            device(Some("True"), Some(1_900_000_000)),
            "a",
        )))));
        dw.apply_watcher_event(&Event::Apply(DeserializeGuard(Ok(named(
            device(None, Some(1_800_000_000)),
            "b",
        )))));
        for (i, phase) in [StreamPhase::Active, StreamPhase::Active, StreamPhase::Expired]
            .into_iter()
            .enumerate()
        {
            sw.apply_watcher_event(&Event::Apply(DeserializeGuard(Ok(named(
                stream(Some(phase)),
                &format!("s{i}"),
            )))));
        }
        c.set_devices(devices);
        c.set_streams(streams);
        let registry = prometheus::Registry::new();
        registry.register(Box::new(c)).unwrap();
        let mut buf = Vec::new();
        prometheus::Encoder::encode(&prometheus::TextEncoder::new(), &registry.gather(), &mut buf).unwrap();
        let got = tether_net::admin::parse_exposition(std::str::from_utf8(&buf).unwrap()).unwrap();
        let want: std::collections::BTreeMap<String, f64> = [
            (r#"tether_operator_device_streams{phase="Active"}"#, 2.0),
            (r#"tether_operator_device_streams{phase="Expired"}"#, 1.0),
            (r#"tether_operator_device_streams{phase="Failed"}"#, 0.0),
            (r#"tether_operator_device_streams{phase="Pending"}"#, 0.0),
            (r#"tether_operator_device_streams{phase="Ready"}"#, 0.0),
            (r#"tether_operator_device_streams{phase="Unknown"}"#, 0.0),
            (r#"tether_operator_devices{ready="false"}"#, 1.0),
            (r#"tether_operator_devices{ready="true"}"#, 1.0),
            (
                "tether_operator_device_certificate_earliest_expiry_timestamp_seconds",
                1_800_000_000.0,
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        assert_eq!(got, want);
    }
}
