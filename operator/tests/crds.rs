//! The CRDs on the real API server: every example applies with `kubectl apply`, and invalid
//! objects are rejected with readable messages (CEL and schema rules).

mod opsupport;

use opsupport::{install_crds, kubectl_apply, repo};
use tether_tests::testenv::TestEnv;

fn in_ns(yaml: &str, ns: &str) -> String {
    yaml.replace("namespace: default", &format!("namespace: {ns}"))
        .replace("namespace: tether-system", &format!("namespace: {ns}"))
}

#[tokio::test]
async fn every_example_applies_with_kubectl() -> anyhow::Result<()> {
    let Some(env) = TestEnv::attach("every_example_applies_with_kubectl").await else {
        return Ok(());
    };
    install_crds(&env)?;
    env.with_temp_ns("examples", |env, ns| async move {
        let mut paths: Vec<_> = std::fs::read_dir(repo().join("examples"))?.collect::<Result<_, _>>()?;
        paths.sort_by_key(std::fs::DirEntry::path);
        anyhow::ensure!(!paths.is_empty(), "no examples");
        for entry in paths {
            let yaml = in_ns(&std::fs::read_to_string(entry.path())?, &ns);
            let (ok, out) = kubectl_apply(&env, &yaml, &[])?;
            anyhow::ensure!(ok, "{} does not apply: {out}", entry.path().display());
        }
        // Short names find our objects and nothing else (`ds` once resolved to DaemonSets).
        for (short, prefix) in [
            ("dev", "device.tether.dev/"),
            ("dstream", "devicestream.tether.dev/"),
            ("rp", "relaypool.tether.dev/"),
        ] {
            let out = env
                .kubectl()
                .args(["get", short, "-n", &ns, "-o", "name"])
                .output()?;
            let (stdout, stderr) = (
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
            );
            anyhow::ensure!(
                out.status.success() && stdout.contains(prefix) && !stderr.contains("could also match"),
                "kubectl get {short}: {stdout}{stderr}"
            );
        }
        Ok(())
    })
    .await
}

fn rejected(env: &TestEnv, yaml: &str, expect: &str) -> anyhow::Result<()> {
    let (ok, out) = kubectl_apply(env, yaml, &[])?;
    anyhow::ensure!(!ok, "accepted although invalid:\n{yaml}");
    anyhow::ensure!(out.contains(expect), "message {out:?} lacks {expect:?}");
    Ok(())
}

#[tokio::test]
async fn invalid_objects_are_rejected_with_readable_messages() -> anyhow::Result<()> {
    let Some(env) = TestEnv::attach("invalid_objects_are_rejected_with_readable_messages").await else {
        return Ok(());
    };
    install_crds(&env)?;
    env.with_temp_ns("invalid", |env, ns| async move {
        let device = |name: &str| {
            format!(
                "apiVersion: tether.dev/v1alpha1\nkind: Device\nmetadata: {{name: {name}, namespace: {ns}}}\n\
                 spec: {{allowedPorts: [22]}}\n"
            )
        };
        let stream = |device: &str, port: i32, ttl: &str| {
            format!(
                "apiVersion: tether.dev/v1alpha1\nkind: DeviceStream\nmetadata: {{name: s1, namespace: {ns}}}\n\
                 spec: {{device: {device}, port: {port}, ttl: {ttl}}}\n"
            )
        };
        rejected(&env, &device("pump.7"), "a Device name must be a DNS label")?;
        rejected(&env, &stream("pump-7", 0, "10m"), "spec.port")?;
        rejected(&env, &stream("pump-7", 0, "10m"), "greater than or equal to 1")?;
        rejected(&env, &stream("pump-7", 22, "25h"), "ttl must be between 1m and 24h")?;
        let idle = format!(
            "apiVersion: tether.dev/v1alpha1\nkind: DeviceStream\nmetadata: {{name: s2, namespace: {ns}}}\n\
             spec: {{device: pump-7, port: 22, idleTimeout: 5s}}\n"
        );
        rejected(&env, &idle, "idleTimeout must be between 10s and 24h")?;
        let (ok, out) = kubectl_apply(&env, &stream("pump-7", 22, "10m"), &[])?;
        anyhow::ensure!(ok, "valid DeviceStream refused: {out}");
        rejected(&env, &stream("pump-8", 22, "10m"), "device is immutable; create a new DeviceStream")?;
        let added = format!(
            "apiVersion: tether.dev/v1alpha1\nkind: DeviceStream\nmetadata: {{name: s1, namespace: {ns}}}\n\
             spec: {{device: pump-7, port: 22, ttl: 10m, idleTimeout: 1m}}\n"
        );
        rejected(&env, &added, "idleTimeout can be set only when the DeviceStream is created")?;
        Ok(())
    })
    .await
}
