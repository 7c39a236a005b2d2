//! `kubectl tether devices` and `streams`: tables like `kubectl get`, or `-o json|yaml` Lists.

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{Api, ResourceExt, api::ListParams};
use serde::Serialize;
use tether_api::{Device, DeviceStream};

use crate::{
    Error, Result,
    args::{Format, ListArgs},
    cluster::{Cluster, STREAM_USER_ROLE},
};

/// Lists Devices: NAME, CONNECTED, RELAY, LAST SEEN, PORTS, DISABLED, AGE.
///
/// # Errors
/// [`Error::Forbidden`] without `list` on Devices.
pub async fn devices(cluster: &Cluster, args: ListArgs) -> Result<()> {
    let api: Api<Device> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let items = api
        .list(&ListParams::default())
        .await
        .map_err(cluster.api_error("list", "devices.tether.dev", STREAM_USER_ROLE))?
        .items;
    let now = Timestamp::now();
    let rows = items
        .iter()
        .map(|d| {
            let st = d.status.clone().unwrap_or_default();
            vec![
                d.name_any(),
                st.connected.map_or("-".into(), |c| c.to_string()),
                st.relay.unwrap_or_else(|| "-".into()),
                st.last_seen
                    .as_ref()
                    .map_or("-".into(), |t| format!("{} ago", age(t, now))),
                d.spec
                    .allowed_ports
                    .iter()
                    .map(i32::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
                d.spec.disabled.to_string(),
                d.metadata
                    .creation_timestamp
                    .as_ref()
                    .map_or("-".into(), |t| age(t, now)),
            ]
        })
        .collect::<Vec<_>>();
    print_list(
        &items,
        args.output,
        &[
            "NAME",
            "CONNECTED",
            "RELAY",
            "LAST SEEN",
            "PORTS",
            "DISABLED",
            "AGE",
        ],
        &rows,
        &cluster.namespace,
        "devices",
    )
}

/// Lists DeviceStreams: NAME, DEVICE, PORT, PHASE, RELAY, BYTES (to/from device), CONNS, OWNER, AGE.
///
/// # Errors
/// [`Error::Forbidden`] without `list` on DeviceStreams.
pub async fn streams(cluster: &Cluster, args: ListArgs) -> Result<()> {
    let api: Api<DeviceStream> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let items = api
        .list(&ListParams::default())
        .await
        .map_err(cluster.api_error("list", "devicestreams.tether.dev", STREAM_USER_ROLE))?
        .items;
    let now = Timestamp::now();
    let rows = items
        .iter()
        .map(|s| {
            let st = s.status.clone().unwrap_or_default();
            vec![
                s.name_any(),
                s.spec.device.clone(),
                s.spec.port.to_string(),
                st.phase.map_or("-".into(), |p| format!("{p:?}")),
                st.relay.unwrap_or_else(|| "-".into()),
                format!(
                    "{}/{}",
                    bytes(st.bytes_to_device.unwrap_or(0)),
                    bytes(st.bytes_from_device.unwrap_or(0))
                ),
                st.connections.unwrap_or(0).to_string(),
                s.labels()
                    .get(crate::stream::OWNER_LABEL)
                    .cloned()
                    .unwrap_or_else(|| "-".into()),
                s.metadata
                    .creation_timestamp
                    .as_ref()
                    .map_or("-".into(), |t| age(t, now)),
            ]
        })
        .collect::<Vec<_>>();
    print_list(
        &items,
        args.output,
        &[
            "NAME",
            "DEVICE",
            "PORT",
            "PHASE",
            "RELAY",
            "BYTES(TO/FROM)",
            "CONNS",
            "OWNER",
            "AGE",
        ],
        &rows,
        &cluster.namespace,
        "DeviceStreams",
    )
}

fn print_list<T: Serialize>(
    items: &[T],
    format: Option<Format>,
    header: &[&str],
    rows: &[Vec<String>],
    namespace: &str,
    what: &str,
) -> Result<()> {
    let list = serde_json::json!({ "apiVersion": "v1", "kind": "List", "items": items });
    match format {
        Some(Format::Json) => {
            let text = serde_json::to_string_pretty(&list).map_err(|e| Error::Malformed(e.to_string()))?;
            println!("{text}");
        }
        Some(Format::Yaml) => {
            let text = serde_yaml::to_string(&list).map_err(|e| Error::Malformed(e.to_string()))?;
            print!("{text}");
        }
        None if rows.is_empty() => eprintln!("No {what} found in {namespace} namespace."),
        None => print!("{}", render(header, rows)),
    }
    Ok(())
}

/// Left-aligned columns separated by three spaces, as kubectl prints them.
pub fn render(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}   "));
            }
        }
        s.push('\n');
        s
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// kubectl-style age: `45s`, `12m`, `5h`, `3d`.
pub fn age(t: &Time, now: Timestamp) -> String {
    let secs = now.as_second().saturating_sub(t.0.as_second()).max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// Bytes with a binary unit: `512B`, `3.2KiB`, `41.0MiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n}B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1}{}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_ages_and_sizes_read_like_kubectl() {
        let t = render(&["NAME", "PHASE"], &[vec!["pump-ssh-x".into(), "Ready".into()]]);
        assert_eq!(t, "NAME         PHASE\npump-ssh-x   Ready\n");
        let now = Timestamp::from_second(1_000_000).expect("ts");
        let at = |s| Time(Timestamp::from_second(s).expect("ts"));
        assert_eq!(age(&at(1_000_000 - 45), now), "45s");
        assert_eq!(age(&at(1_000_000 - 600), now), "10m");
        assert_eq!(age(&at(1_000_000 - 3 * 86_400), now), "3d");
        assert_eq!(bytes(512), "512B");
        assert_eq!(bytes(3 * 1024 * 1024 + 200 * 1024), "3.2MiB");
    }
}
