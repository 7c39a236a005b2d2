//! Device and DeviceStream reconcile outcomes on the real API server, with the operator running
//! in-process under its own ServiceAccount token bound to exactly `deploy/operator/rbac.yaml`:
//! credentials and tokens, conditions and Events, failure paths, idempotency, expiry, renewal,
//! a malformed CA Secret, and cleanup through owner references (garbage collector of the KCM).

mod opsupport;

use std::time::Duration;

use anyhow::{Context as _, ensure};
use k8s_openapi::{api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::Condition};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ObjectMeta, Patch, PatchParams, PostParams},
};
use opsupport::{apply, events_for, secret_value, start_operator, wait_event};
use tether_api::{Device, DeviceStream, RelayPool, StreamPhase};
use tether_proto::token::TokenVerifier;
use tether_tests::testenv::{TestEnv, eventually};

const WAIT: Duration = Duration::from_secs(30);
const DOMAIN: &str = "relay.test";

fn relaypool(ns: &str) -> String {
    format!(
        "apiVersion: tether.dev/v1alpha1\nkind: RelayPool\n\
         metadata: {{name: relays, namespace: {ns}, annotations: {{tether.dev/endpoint: '127.0.0.1:4443'}}}}\n\
         spec: {{relayDomain: {DOMAIN}, minReplicas: 3, maxReplicas: 5}}\n"
    )
}

fn device(ns: &str, name: &str, ports: &str, disabled: bool) -> String {
    format!(
        "apiVersion: tether.dev/v1alpha1\nkind: Device\nmetadata: {{name: {name}, namespace: {ns}}}\n\
         spec: {{allowedPorts: {ports}, disabled: {disabled}}}\n"
    )
}

fn stream(ns: &str, name: &str, device: &str, port: u16, ttl: &str) -> String {
    format!(
        "apiVersion: tether.dev/v1alpha1\nkind: DeviceStream\nmetadata: {{name: {name}, namespace: {ns}}}\n\
         spec: {{device: {device}, port: {port}, ttl: {ttl}, maxConnections: 3, idleTimeout: 5m}}\n"
    )
}

fn cond<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Waits until Device `name`'s condition `type_` has `status` and `reason`; returns the Device.
async fn device_condition(
    client: &Client,
    ns: &str,
    name: &str,
    type_: &str,
    status: &str,
    reason: &str,
) -> anyhow::Result<Device> {
    let api: Api<Device> = Api::namespaced(client.clone(), ns);
    eventually(WAIT, || async {
        let d = api.get(name).await?;
        let st = d.status.clone().unwrap_or_default();
        let c = cond(&st.conditions, type_).with_context(|| format!("no {type_} condition: {st:?}"))?;
        ensure!(
            c.status == status && c.reason == reason,
            "{type_} is {}/{}: {}",
            c.status,
            c.reason,
            c.message
        );
        ensure!(
            c.observed_generation == d.metadata.generation,
            "stale observedGeneration"
        );
        Ok(d)
    })
    .await
}

/// Waits until DeviceStream `name` is in `phase` with Ready `reason`; returns it.
async fn stream_phase(
    client: &Client,
    ns: &str,
    name: &str,
    phase: StreamPhase,
    reason: &str,
) -> anyhow::Result<DeviceStream> {
    let api: Api<DeviceStream> = Api::namespaced(client.clone(), ns);
    eventually(WAIT, || async {
        let s = api.get(name).await?;
        let st = s.status.clone().unwrap_or_default();
        ensure!(
            st.phase == Some(phase),
            "phase {:?}, want {phase:?}: {st:?}",
            st.phase
        );
        let c = cond(&st.conditions, "Ready").context("no Ready condition")?;
        ensure!(
            c.reason == reason,
            "Ready reason {} ({}), want {reason}",
            c.reason,
            c.message
        );
        ensure!(
            st.observed_generation == s.metadata.generation,
            "stale observedGeneration"
        );
        Ok(s)
    })
    .await
}

async fn secret_rv(client: &Client, ns: &str, name: &str) -> anyhow::Result<Option<String>> {
    Ok(Api::<Secret>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await?
        .and_then(|s| s.resource_version()))
}

/// Forces a reconcile (an annotation change is a watch event without a generation bump).
async fn poke<K>(client: &Client, ns: &str, name: &str) -> anyhow::Result<()>
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let patch = serde_json::json!({"metadata": {"annotations": {"test.tether.dev/poke": format!("{:?}", std::time::SystemTime::now())}}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

#[tokio::test]
async fn device_credentials_are_issued_once_renewed_when_due_and_cleaned_up() -> anyhow::Result<()> {
    let Some(env) =
        TestEnv::attach("device_credentials_are_issued_once_renewed_when_due_and_cleaned_up").await
    else {
        return Ok(());
    };
    env.with_temp_ns("op-device", |env, ns| async move {
        let operator = start_operator(&env, &ns).await?;
        let admin = env.client();
        apply::<RelayPool>(&admin, &operator.ns, &relaypool(&operator.ns)).await?;
        apply::<Device>(&admin, &ns, &device(&ns, "pump-7", "[22, 8080]", false)).await?;

        let d = device_condition(&admin, &ns, "pump-7", "Ready", "True", "Ready").await?;
        device_condition(&admin, &ns, "pump-7", "CredentialsIssued", "True", "Issued").await?;
        let st = d.status.clone().unwrap_or_default();
        let secret = "pump-7-tether-credentials";
        ensure!(st.credentials_secret.as_deref() == Some(secret));
        let cert = secret_value(&admin, &ns, secret, "tls.crt").await?;
        ensure!(
            secret_value(&admin, &ns, secret, "tls.key")
                .await?
                .contains("PRIVATE KEY")
        );
        ensure!(
            secret_value(&admin, &ns, secret, "ca.crt").await?
                == secret_value(&admin, &operator.ns, "tether-ca", "tls.crt").await?
        );
        ensure!(secret_value(&admin, &ns, secret, "relay-endpoint").await? == "127.0.0.1:4443");
        ensure!(secret_value(&admin, &ns, secret, "relay-domain").await? == DOMAIN);
        ensure!(secret_value(&admin, &ns, secret, "device").await? == format!("{ns}/pump-7"));
        let not_after = tether_net::pki::not_after_unix(&cert)?;
        ensure!(st.certificate_expires_at.as_ref().map(|t| t.0.as_second()) == Some(not_after));
        let days = (not_after - k8s_openapi::jiff::Timestamp::now().as_second()) / 86_400;
        ensure!(
            (89..=90).contains(&days),
            "certificate valid for {days} days, want 90"
        );
        let owner = Api::<Secret>::namespaced(admin.clone(), &ns)
            .get(secret)
            .await?
            .owner_references()
            .to_vec();
        ensure!(
            owner.len() == 1
                && owner[0].controller == Some(true)
                && owner[0].uid == d.uid().unwrap_or_default()
        );
        ensure!(wait_event(&admin, &ns, "pump-7", "CredentialsIssued").await? == "Normal");

        // Idempotent: another reconcile changes neither the Secret nor the conditions.
        let rv = secret_rv(&admin, &ns, secret).await?;
        let ready_since = cond(&st.conditions, "Ready").map(|c| c.last_transition_time.clone());
        let since = operator.reconciles("device").await?;
        poke::<Device>(&admin, &ns, "pump-7").await?;
        // The reconcile the poke caused must have run, or "nothing changed" proves nothing.
        operator.reconciled_since("device", since).await?;
        ensure!(
            secret_rv(&admin, &ns, secret).await? == rv,
            "a second reconcile rewrote the Secret"
        );
        let again = device_condition(&admin, &ns, "pump-7", "Ready", "True", "Ready").await?;
        let again_st = again.status.unwrap_or_default();
        ensure!(cond(&again_st.conditions, "Ready").map(|c| c.last_transition_time.clone()) == ready_since);

        // Renewal: a certificate inside the renewal window (here: expiring in 1 day) is replaced.
        let ca_secret = Api::<Secret>::namespaced(admin.clone(), &operator.ns)
            .get("tether-ca")
            .await?;
        let field = |k: &str| {
            String::from_utf8(
                ca_secret
                    .data
                    .as_ref()
                    .and_then(|d| d.get(k))
                    .map(|b| b.0.clone())
                    .unwrap_or_default(),
            )
        };
        let ca = tether_net::pki::Ca::from_pem(&field("tls.crt")?, &field("tls.key")?)?;
        let key = tether_proto::name::DeviceKey::new(&ns, "pump-7")?;
        let short = ca.issue_device(&key, "test.tether", Duration::from_secs(86_400))?;
        let patch = serde_json::json!({"stringData": {"tls.crt": short.cert_pem, "tls.key": short.key_pem}});
        Api::<Secret>::namespaced(admin.clone(), &ns)
            .patch(secret, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        ensure!(wait_event(&admin, &ns, "pump-7", "CredentialsRenewed").await? == "Normal");
        eventually(WAIT, || async {
            let renewed =
                tether_net::pki::not_after_unix(&secret_value(&admin, &ns, secret, "tls.crt").await?)?;
            ensure!(
                renewed > not_after - 86_400 && renewed != tether_net::pki::not_after_unix(&short.cert_pem)?,
                "not renewed"
            );
            Ok(())
        })
        .await?;

        // Disabled: Ready False/DeviceDisabled, credentials kept.
        apply::<Device>(&admin, &ns, &device(&ns, "pump-7", "[22, 8080]", true)).await?;
        device_condition(&admin, &ns, "pump-7", "Ready", "False", "DeviceDisabled").await?;
        ensure!(wait_event(&admin, &ns, "pump-7", "DeviceDisabled").await? == "Warning");

        // Cleanup through the owner reference (KCM garbage collector).
        Api::<Device>::namespaced(admin.clone(), &ns)
            .delete("pump-7", &DeleteParams::foreground())
            .await?;
        eventually(WAIT, || async {
            ensure!(
                secret_rv(&admin, &ns, secret).await?.is_none(),
                "credentials Secret still exists"
            );
            Ok(())
        })
        .await?;
        operator.stop().await
    })
    .await
}

#[tokio::test]
async fn device_without_relaypool_gets_credentials_and_no_relay_pool_reason() -> anyhow::Result<()> {
    let Some(env) =
        TestEnv::attach("device_without_relaypool_gets_credentials_and_no_relay_pool_reason").await
    else {
        return Ok(());
    };
    env.with_temp_ns("op-norelay", |env, ns| async move {
        let operator = start_operator(&env, &ns).await?;
        let admin = env.client();
        apply::<Device>(&admin, &ns, &device(&ns, "pump-1", "[22]", false)).await?;
        device_condition(&admin, &ns, "pump-1", "Ready", "False", "NoRelayPool").await?;
        device_condition(&admin, &ns, "pump-1", "CredentialsIssued", "True", "Issued").await?;
        ensure!(
            secret_value(&admin, &ns, "pump-1-tether-credentials", "tls.crt")
                .await?
                .contains("CERTIFICATE")
        );
        // A RelayPool appearing later adds the endpoint without reissuing the certificate.
        let cert = secret_value(&admin, &ns, "pump-1-tether-credentials", "tls.crt").await?;
        apply::<RelayPool>(&admin, &operator.ns, &relaypool(&operator.ns)).await?;
        device_condition(&admin, &ns, "pump-1", "Ready", "True", "Ready").await?;
        eventually(WAIT, || async {
            ensure!(secret_value(&admin, &ns, "pump-1-tether-credentials", "relay-domain").await? == DOMAIN);
            Ok(())
        })
        .await?;
        ensure!(
            secret_value(&admin, &ns, "pump-1-tether-credentials", "tls.crt").await? == cert,
            "certificate reissued"
        );
        operator.stop().await
    })
    .await
}

#[tokio::test]
async fn stream_token_is_minted_once_then_expires_and_is_cleaned_up() -> anyhow::Result<()> {
    let Some(env) = TestEnv::attach("stream_token_is_minted_once_then_expires_and_is_cleaned_up").await
    else {
        return Ok(());
    };
    env.with_temp_ns("op-stream", |env, ns| async move {
        let operator = start_operator(&env, &ns).await?;
        let admin = env.client();
        apply::<RelayPool>(&admin, &operator.ns, &relaypool(&operator.ns)).await?;
        apply::<Device>(&admin, &ns, &device(&ns, "pump-7", "[22]", false)).await?;
        apply::<DeviceStream>(&admin, &ns, &stream(&ns, "ssh", "pump-7", 22, "1m")).await?;
        apply::<DeviceStream>(&admin, &ns, &stream(&ns, "ssh-long", "pump-7", 22, "1h")).await?;

        let s = stream_phase(&admin, &ns, "ssh", StreamPhase::Ready, "Ready").await?;
        let st = s.status.clone().unwrap_or_default();
        let secret = "ssh-tether-token";
        ensure!(st.token_secret.as_deref() == Some(secret));
        let endpoint = st.endpoint.clone().context("no endpoint")?;
        ensure!(endpoint.address == "127.0.0.1:4443");
        ensure!(endpoint.server_name == format!("pump-7.{ns}.{DOMAIN}"));
        // No relay is ready yet (no EndpointSlice): no owner. Once the members Service's
        // EndpointSlice lists ready relays, status.relay follows the ring over them.
        ensure!(st.relay.is_none(), "relay {:?} before any relay is ready", st.relay);
        let members = ["relays-0", "relays-1", "relays-2"];
        let slice: k8s_openapi::api::discovery::v1::EndpointSlice = serde_yaml::from_str(&format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: relays-members-x, labels: {{kubernetes.io/service-name: relays-members}}}}\n\
             addressType: IPv4\nendpoints:\n{}",
            members
                .iter()
                .enumerate()
                .map(|(i, m)| format!(
                    "- {{addresses: [10.1.0.{}], conditions: {{ready: true}}, targetRef: {{kind: Pod, name: {m}}}}}\n",
                    i + 2
                ))
                .collect::<String>()
        ))?;
        kube::Api::<k8s_openapi::api::discovery::v1::EndpointSlice>::namespaced(admin.clone(), &operator.ns)
            .create(&Default::default(), &slice)
            .await?;
        let owner = tether_proto::ring::owner(&format!("{ns}/pump-7"), &members);
        eventually(WAIT, || async {
            let st = stream_phase(&admin, &ns, "ssh", StreamPhase::Ready, "Ready").await?.status.unwrap_or_default();
            ensure!(st.relay.as_deref() == owner, "relay {:?}, ring says {owner:?}", st.relay);
            Ok(())
        })
        .await?;
        ensure!(cond(&st.conditions, "TokenIssued").is_some_and(|c| c.status == "True"));
        ensure!(wait_event(&admin, &ns, "ssh", "TokenIssued").await? == "Normal");

        // The token verifies with the published key and carries the stream's claims.
        let token = secret_value(&admin, &ns, secret, "token").await?;
        ensure!(secret_value(&admin, &ns, secret, "server-name").await? == endpoint.server_name);
        ensure!(secret_value(&admin, &ns, secret, "endpoint").await? == endpoint.address);
        ensure!(
            secret_value(&admin, &ns, secret, "ca.crt")
                .await?
                .contains("CERTIFICATE")
        );
        let verifier = TokenVerifier::from_public_key_pem(
            &secret_value(&admin, &operator.ns, "tether-token-key", "public.pem").await?,
        )?;
        let now = u64::try_from(k8s_openapi::jiff::Timestamp::now().as_second())?;
        let claims = verifier.verify(&token, DOMAIN, now, 5)?;
        ensure!(claims.stream_uid == s.uid().unwrap_or_default());
        ensure!(claims.namespace == ns && claims.device == "pump-7" && claims.port == 22);
        ensure!(claims.max_connections == Some(3));
        ensure!(
            claims.idle_timeout == Some(300),
            "idle timeout {:?}",
            claims.idle_timeout
        );
        ensure!(claims.expires_at - claims.not_before == 60);
        let created = s
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.as_second())
            .unwrap_or_default();
        ensure!(i64::try_from(claims.not_before)? == created);
        ensure!(st.expires_at.as_ref().map(|t| t.0.as_second()) == Some(created + 60));

        // Minted once: another reconcile changes nothing.
        let rv = secret_rv(&admin, &ns, secret).await?;
        let since = operator.reconciles("devicestream").await?;
        poke::<DeviceStream>(&admin, &ns, "ssh").await?;
        operator.reconciled_since("devicestream", since).await?;
        ensure!(
            secret_rv(&admin, &ns, secret).await? == rv,
            "a second reconcile rewrote the token Secret"
        );
        ensure!(
            secret_value(&admin, &ns, secret, "token").await? == token,
            "token re-minted"
        );

        // Deleting a DeviceStream deletes its token Secret (owner reference).
        stream_phase(&admin, &ns, "ssh-long", StreamPhase::Ready, "Ready").await?;
        Api::<DeviceStream>::namespaced(admin.clone(), &ns)
            .delete("ssh-long", &DeleteParams::foreground())
            .await?;
        eventually(WAIT, || async {
            ensure!(
                secret_rv(&admin, &ns, "ssh-long-tether-token").await?.is_none(),
                "token Secret survived its stream"
            );
            Ok(())
        })
        .await?;

        // At the TTL: Expired, Secret gone.
        let api: Api<DeviceStream> = Api::namespaced(admin.clone(), &ns);
        eventually(Duration::from_secs(90), || async {
            let s = api.get("ssh").await?;
            ensure!(
                s.status.and_then(|st| st.phase) == Some(StreamPhase::Expired),
                "not expired yet"
            );
            Ok(())
        })
        .await?;
        stream_phase(&admin, &ns, "ssh", StreamPhase::Expired, "Expired").await?;
        ensure!(
            secret_rv(&admin, &ns, secret).await?.is_none(),
            "token Secret survived expiry"
        );
        operator.stop().await
    })
    .await
}

#[tokio::test]
async fn stream_failure_paths_have_actionable_reasons() -> anyhow::Result<()> {
    let Some(env) = TestEnv::attach("stream_failure_paths_have_actionable_reasons").await else {
        return Ok(());
    };
    env.with_temp_ns("op-fail", |env, ns| async move {
        let operator = start_operator(&env, &ns).await?;
        let admin = env.client();
        apply::<RelayPool>(&admin, &operator.ns, &relaypool(&operator.ns)).await?;
        apply::<Device>(&admin, &ns, &device(&ns, "off", "[22]", true)).await?;
        apply::<Device>(&admin, &ns, &device(&ns, "pump", "[22]", false)).await?;
        apply::<DeviceStream>(&admin, &ns, &stream(&ns, "missing", "later", 22, "10m")).await?;
        apply::<DeviceStream>(&admin, &ns, &stream(&ns, "port", "pump", 3389, "10m")).await?;
        apply::<DeviceStream>(&admin, &ns, &stream(&ns, "disabled", "off", 22, "10m")).await?;

        stream_phase(&admin, &ns, "missing", StreamPhase::Failed, "DeviceNotFound").await?;
        stream_phase(&admin, &ns, "port", StreamPhase::Failed, "PortNotAllowed").await?;
        stream_phase(&admin, &ns, "disabled", StreamPhase::Failed, "DeviceDisabled").await?;
        for (name, reason) in [
            ("missing", "DeviceNotFound"),
            ("port", "PortNotAllowed"),
            ("disabled", "DeviceDisabled"),
        ] {
            ensure!(wait_event(&admin, &ns, name, reason).await? == "Warning");
            ensure!(
                secret_rv(&admin, &ns, &format!("{name}-tether-token"))
                    .await?
                    .is_none(),
                "{name} got a token"
            );
        }

        // Creating the missing Device fixes the stream (Devices are watched).
        apply::<Device>(&admin, &ns, &device(&ns, "later", "[22]", false)).await?;
        stream_phase(&admin, &ns, "missing", StreamPhase::Ready, "Ready").await?;
        ensure!(secret_rv(&admin, &ns, "missing-tether-token").await?.is_some());
        // Disabling it fails the stream again and removes its token Secret.
        apply::<Device>(&admin, &ns, &device(&ns, "later", "[22]", true)).await?;
        stream_phase(&admin, &ns, "missing", StreamPhase::Failed, "DeviceDisabled").await?;
        eventually(WAIT, || async {
            ensure!(
                secret_rv(&admin, &ns, "missing-tether-token").await?.is_none(),
                "token Secret kept"
            );
            Ok(())
        })
        .await?;
        let events = events_for(&admin, &ns, "missing").await?;
        ensure!(events.iter().any(|(_, r)| r == "TokenIssued"), "{events:?}");
        operator.stop().await
    })
    .await
}

#[tokio::test]
async fn malformed_ca_secret_is_reported_and_never_overwritten() -> anyhow::Result<()> {
    let Some(env) = TestEnv::attach("malformed_ca_secret_is_reported_and_never_overwritten").await else {
        return Ok(());
    };
    env.with_temp_ns("op-badca", |env, ns| async move {
        let admin = env.client();
        opsupport::install_crds(&env)?;
        let op = opsupport::operator_ns(&env).await?;
        let op_ns = op.name().to_owned();
        let secrets: Api<Secret> = Api::namespaced(admin.clone(), &op_ns);
        let bad = Secret {
            metadata: ObjectMeta {
                name: Some("tether-ca".into()),
                ..ObjectMeta::default()
            },
            string_data: Some(
                [
                    ("tls.crt".to_owned(), "not a certificate".to_owned()),
                    ("tls.key".to_owned(), "nor a key".to_owned()),
                ]
                .into(),
            ),
            ..Secret::default()
        };
        secrets.create(&PostParams::default(), &bad).await?;
        apply::<Device>(&admin, &ns, &device(&ns, "pump", "[22]", false)).await?;
        apply::<DeviceStream>(&admin, &ns, &stream(&ns, "s", "pump", 22, "10m")).await?;
        let operator = opsupport::start_operator_in(&env, op, &ns).await?;

        let d = device_condition(&admin, &ns, "pump", "Ready", "False", "TrustAnchorInvalid").await?;
        let msg = cond(&d.status.unwrap_or_default().conditions, "Ready")
            .map(|c| c.message.clone())
            .unwrap_or_default();
        ensure!(
            msg.contains("tether-ca") && msg.contains("malformed"),
            "unhelpful message {msg:?}"
        );
        let api: Api<DeviceStream> = Api::namespaced(admin.clone(), &ns);
        eventually(WAIT, || async {
            let s = api.get("s").await?;
            let reason = s
                .status
                .as_ref()
                .and_then(|st| cond(&st.conditions, "Ready"))
                .map(|c| c.reason.clone());
            ensure!(
                reason.as_deref() == Some("TrustAnchorInvalid"),
                "stream reason {reason:?}"
            );
            Ok(())
        })
        .await?;
        ensure!(wait_event(&admin, &ns, "pump", "TrustAnchorInvalid").await? == "Warning");
        ensure!(secret_rv(&admin, &ns, "pump-tether-credentials").await?.is_none());
        // Never overwritten.
        ensure!(secret_value(&admin, &op_ns, "tether-ca", "tls.crt").await? == "not a certificate");

        // Deleting the malformed Secret lets the operator create a CA and carry on.
        secrets.delete("tether-ca", &DeleteParams::default()).await?;
        // No RelayPool in this namespace: NoRelayPool is the healthy outcome.
        device_condition(&admin, &ns, "pump", "Ready", "False", "NoRelayPool").await?;
        device_condition(&admin, &ns, "pump", "CredentialsIssued", "True", "Issued").await?;
        ensure!(
            secret_value(&admin, &op_ns, "tether-ca", "tls.crt")
                .await?
                .contains("CERTIFICATE")
        );
        operator.stop().await
    })
    .await
}
