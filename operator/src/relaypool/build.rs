//! Build step: every object a RelayPool owns, as plain data (no client, no clock).

use std::collections::BTreeMap;

use k8s_openapi::{
    ByteString,
    api::{
        apps::v1::{StatefulSet, StatefulSetSpec},
        core::v1::{
            Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, EnvVarSource,
            HTTPGetAction, ObjectFieldSelector, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
            SeccompProfile, Secret, SecretVolumeSource, SecurityContext, Service, ServiceAccount,
            ServicePort, ServiceSpec, Volume, VolumeMount,
        },
        policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec},
        rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject},
    },
    apimachinery::pkg::{
        apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference},
        util::intstr::IntOrString,
    },
};
use tether_net::pki::Issued;

use super::{names, validate::Valid};

/// Port of the relay's data listener (TLS) inside the pod.
pub const DATA_PORT: i32 = 8443;
/// Port of the relay's admin listener (`/ready`, `/live`, `/metrics`).
pub const ADMIN_PORT: i32 = 9090;
/// Port where relays forward connections to each other (PROXY v2, ring members only).
pub const PEER_PORT: i32 = 8444;
/// Readiness probe period: after SIGTERM a relay answers 503 and leaves every ring within about
/// one period; [`DRAIN_GRACE_SECONDS`] must stay above it so nothing is refused meanwhile.
pub const READINESS_PERIOD_SECONDS: i32 = 2;
/// Where the serving certificate Secret is mounted.
pub const TLS_DIR: &str = "/etc/tether/tls";
/// Where the trust ConfigMap (CA bundle, token key) is mounted.
pub const TRUST_DIR: &str = "/etc/tether/trust";
/// Drain grace passed to relays: `/ready` reports 503 for this long before draining (DESIGN §4).
pub const DRAIN_GRACE_SECONDS: i64 = 5;
/// Drain deadline passed to relays: how long streams may take to finish after the grace.
pub const DRAIN_DEADLINE_SECONDS: i64 = 30;
/// Slack on top of grace + deadline before the kubelet kills a relay (STYLE §11: keep
/// `terminationGracePeriodSeconds` above the sum of the two phases).
const TERMINATION_SLACK_SECONDS: i64 = 10;
/// Non-root UID/GID of the relay (the distroless `nonroot` user).
const RELAY_UID: i64 = 65532;
/// Annotation on the serving Secret listing the DNS names it was issued for.
pub const DNS_NAMES_ANNOTATION: &str = "tether.dev/dns-names";
/// Pod-template annotation with a hash of certificate and trust material, so pods roll on rotation.
pub const CONFIG_HASH_ANNOTATION: &str = "tether.dev/config-hash";
/// Label value of `app.kubernetes.io/name` on everything a pool owns.
pub const APP_NAME: &str = "tether-relay";
/// Label value of `app.kubernetes.io/component` on everything a pool owns (also the owned-object
/// watch selector).
pub const COMPONENT: &str = "relay";

/// Everything a RelayPool owns.
#[derive(Clone, Debug)]
pub struct Children {
    /// The relays' ServiceAccount.
    pub service_account: ServiceAccount,
    /// Least-privilege Role of the relays.
    pub role: Role,
    /// Binds `role` to `service_account`.
    pub role_binding: RoleBinding,
    /// The serving certificate (`tls.crt`, `tls.key`, `ca.crt`).
    pub tls_secret: Secret,
    /// CA bundle and token verification key.
    pub trust: ConfigMap,
    /// Headless Service whose ready endpoints are the ring's members.
    pub members_service: Service,
    /// The public Service.
    pub public_service: Service,
    /// At most one relay down at a time for voluntary disruptions.
    pub pdb: PodDisruptionBudget,
    /// The relays.
    pub stateful_set: StatefulSet,
}

/// Trust material the relays get.
#[derive(Clone, Debug)]
pub struct TrustMaterial<'a> {
    /// CA certificate, PEM: verifies device client certificates.
    pub ca_pem: &'a str,
    /// Ed25519 public key, SPKI PEM: verifies stream tokens.
    pub token_public_key_pem: &'a str,
    /// SPIFFE trust domain of device identities.
    pub trust_domain: &'a str,
}

/// The labels that select a pool's relay pods.
pub fn selector_labels(pool: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), APP_NAME.to_owned()),
        ("app.kubernetes.io/instance".to_owned(), pool.to_owned()),
    ])
}

/// Labels on every owned object: selector labels plus component and manager.
pub fn labels(pool: &str) -> BTreeMap<String, String> {
    let mut l = selector_labels(pool);
    l.insert("app.kubernetes.io/component".into(), COMPONENT.into());
    l.insert("app.kubernetes.io/managed-by".into(), crate::FIELD_MANAGER.into());
    l
}

/// DNS names of the serving certificate: the relay domain, and the public Service's in-cluster
/// names. No wildcard: clients send SNI `<device>.<namespace>.<relayDomain>` for routing but
/// verify the certificate against the relay's own name (`tether_net::tls::RelayNameVerifier`,
/// DESIGN §4), so `*.<relayDomain>` would only widen what a leaked key could impersonate.
pub fn dns_names(pool: &str, namespace: &str, relay_domain: &str) -> Vec<String> {
    vec![
        relay_domain.to_owned(),
        format!("{pool}.{namespace}.svc"),
        format!("{pool}.{namespace}.svc.cluster.local"),
    ]
}

/// 64-bit FNV-1a: a stable hash (unlike `DefaultHasher`, the same across Rust releases, so an
/// operator upgrade does not roll every relay).
fn fnv1a(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.bytes().chain([0]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

fn meta(name: String, namespace: &str, owner: &OwnerReference, pool: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(namespace.to_owned()),
        labels: Some(labels(pool)),
        owner_references: Some(vec![owner.clone()]),
        ..ObjectMeta::default()
    }
}

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..EnvVar::default()
    }
}

fn env_field(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

fn probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("admin".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        ..Probe::default()
    }
}

/// Builds every object of the pool described by `valid`, running `replicas` relays with the
/// serving certificate `cert` and the trust material `trust`.
pub fn build(valid: &Valid, replicas: i32, cert: &Issued, trust: &TrustMaterial<'_>) -> Children {
    let Valid {
        name: pool,
        namespace: ns,
        spec,
        owner,
        ..
    } = valid;
    let (pool, ns) = (pool.as_str(), ns.as_str());
    let n = names(pool);
    let meta = |name: &str| meta(name.to_owned(), ns, owner, pool);

    let service_account = ServiceAccount {
        metadata: meta(&n.service_account),
        ..ServiceAccount::default()
    };
    let role = Role {
        metadata: meta(&n.service_account),
        rules: Some(relay_rules()),
    };
    let role_binding = RoleBinding {
        metadata: meta(&n.service_account),
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "Role".into(),
            name: n.service_account.clone(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: n.service_account.clone(),
            namespace: Some(ns.to_owned()),
            ..Subject::default()
        }]),
    };

    let dns = dns_names(pool, ns, &spec.relay_domain);
    let mut tls_meta = meta(&n.tls_secret);
    tls_meta.annotations = Some(BTreeMap::from([(DNS_NAMES_ANNOTATION.to_owned(), dns.join(","))]));
    let bytes = |s: &str| ByteString(s.as_bytes().to_vec());
    let tls_secret = Secret {
        metadata: tls_meta,
        type_: Some("kubernetes.io/tls".into()),
        data: Some(BTreeMap::from([
            ("tls.crt".to_owned(), bytes(&cert.cert_pem)),
            ("tls.key".to_owned(), bytes(&cert.key_pem)),
            ("ca.crt".to_owned(), bytes(trust.ca_pem)),
        ])),
        ..Secret::default()
    };
    let trust_cm = ConfigMap {
        metadata: meta(&n.trust),
        data: Some(BTreeMap::from([
            ("ca.crt".to_owned(), trust.ca_pem.to_owned()),
            ("token.pub".to_owned(), trust.token_public_key_pem.to_owned()),
        ])),
        ..ConfigMap::default()
    };

    let port = |name: &str, port: i32| ServicePort {
        name: Some(name.into()),
        port,
        target_port: Some(IntOrString::String(name.into())),
        protocol: Some("TCP".into()),
        ..ServicePort::default()
    };
    let members_service = Service {
        metadata: meta(&n.members_service),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            // Only ready relays are ring members: a draining relay leaves the ring first.
            publish_not_ready_addresses: Some(false),
            selector: Some(selector_labels(pool)),
            ports: Some(vec![
                port("data", DATA_PORT),
                port(tether_api::members::PEER_PORT_NAME, PEER_PORT),
                port("admin", ADMIN_PORT),
            ]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    };
    let mut public_meta = meta(&n.public_service);
    if !spec.service.annotations.is_empty() {
        public_meta.annotations = Some(spec.service.annotations.clone());
    }
    let public_service = Service {
        metadata: public_meta,
        spec: Some(ServiceSpec {
            type_: Some(spec.service.type_.clone()),
            selector: Some(selector_labels(pool)),
            ports: Some(vec![ServicePort {
                name: Some("data".into()),
                port: spec.service.port,
                target_port: Some(IntOrString::String("data".into())),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    };
    let selector = LabelSelector {
        match_labels: Some(selector_labels(pool)),
        ..LabelSelector::default()
    };
    let pdb = PodDisruptionBudget {
        metadata: meta(&n.pdb),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(selector.clone()),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    };

    let config_hash = fnv1a(&[
        &cert.cert_pem,
        trust.ca_pem,
        trust.token_public_key_pem,
        &spec.relay_domain,
        trust.trust_domain,
    ]);
    let mut pod_labels = labels(pool);
    pod_labels.remove("app.kubernetes.io/managed-by");
    let container = Container {
        name: "relay".into(),
        image: Some(spec.image.clone()),
        // Configuration through the relay's TETHER_RELAY_* variables (relay/src/args.rs): nothing
        // secret is in argv, and every setting shows in `kubectl describe`.
        env: Some(vec![
            env("TETHER_RELAY_LISTEN", format!("0.0.0.0:{DATA_PORT}")),
            // The relay's default admin bind is loopback; in the pod, Prometheus and the kubelet
            // probes reach it on the pod IP, and nothing else shares the pod's network.
            env("TETHER_RELAY_ADMIN_LISTEN", format!("0.0.0.0:{ADMIN_PORT}")),
            env("TETHER_RELAY_DOMAIN", spec.relay_domain.clone()),
            env("TETHER_TRUST_DOMAIN", trust.trust_domain),
            env("TETHER_RELAY_TLS_CERT", format!("{TLS_DIR}/tls.crt")),
            env("TETHER_RELAY_TLS_KEY", format!("{TLS_DIR}/tls.key")),
            env("TETHER_RELAY_CLIENT_CA", format!("{TRUST_DIR}/ca.crt")),
            env("TETHER_RELAY_TOKEN_PUBLIC_KEY", format!("{TRUST_DIR}/token.pub")),
            env("TETHER_RELAY_DRAIN_GRACE", format!("{DRAIN_GRACE_SECONDS}s")),
            env(
                "TETHER_RELAY_DRAIN_DEADLINE",
                format!("{DRAIN_DEADLINE_SECONDS}s"),
            ),
            // Fleet mode: the ring from this pool's EndpointSlices, forwarding on the peer port
            // from the pod IP (DESIGN §4).
            env("TETHER_RELAY_KUBERNETES", "true"),
            env("TETHER_RELAY_POOL", pool),
            env("TETHER_RELAY_PEER_LISTEN", format!("0.0.0.0:{PEER_PORT}")),
            env_field("POD_NAME", "metadata.name"),
            env_field("POD_NAMESPACE", "metadata.namespace"),
            env_field("POD_IP", "status.podIP"),
        ]),
        ports: Some(vec![
            ContainerPort {
                name: Some("data".into()),
                container_port: DATA_PORT,
                protocol: Some("TCP".into()),
                ..ContainerPort::default()
            },
            ContainerPort {
                name: Some(tether_api::members::PEER_PORT_NAME.into()),
                container_port: PEER_PORT,
                protocol: Some("TCP".into()),
                ..ContainerPort::default()
            },
            ContainerPort {
                name: Some("admin".into()),
                container_port: ADMIN_PORT,
                protocol: Some("TCP".into()),
                ..ContainerPort::default()
            },
        ]),
        readiness_probe: Some(probe("/ready", READINESS_PERIOD_SECONDS, 1)),
        liveness_probe: Some(probe("/live", 10, 3)),
        resources: spec.resources.clone(),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(RELAY_UID),
            run_as_group: Some(RELAY_UID),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Capabilities::default()
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..SeccompProfile::default()
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(vec![
            VolumeMount {
                name: "tls".into(),
                mount_path: TLS_DIR.into(),
                read_only: Some(true),
                ..VolumeMount::default()
            },
            VolumeMount {
                name: "trust".into(),
                mount_path: TRUST_DIR.into(),
                read_only: Some(true),
                ..VolumeMount::default()
            },
        ]),
        ..Container::default()
    };
    let stateful_set = StatefulSet {
        metadata: meta(&n.stateful_set),
        spec: Some(StatefulSetSpec {
            replicas: Some(replicas),
            service_name: Some(n.members_service.clone()),
            // Relays are independent of each other: start and stop them all at once.
            pod_management_policy: Some("Parallel".into()),
            selector,
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(BTreeMap::from([(
                        CONFIG_HASH_ANNOTATION.to_owned(),
                        format!("{config_hash:016x}"),
                    )])),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(n.service_account.clone()),
                    termination_grace_period_seconds: Some(
                        DRAIN_GRACE_SECONDS + DRAIN_DEADLINE_SECONDS + TERMINATION_SLACK_SECONDS,
                    ),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(RELAY_UID),
                        run_as_group: Some(RELAY_UID),
                        fs_group: Some(RELAY_UID),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".into(),
                            ..SeccompProfile::default()
                        }),
                        ..PodSecurityContext::default()
                    }),
                    containers: vec![container],
                    volumes: Some(vec![
                        Volume {
                            name: "tls".into(),
                            secret: Some(SecretVolumeSource {
                                secret_name: Some(n.tls_secret.clone()),
                                // Owner read, group (fsGroup) read: the key stays private.
                                default_mode: Some(0o440),
                                ..SecretVolumeSource::default()
                            }),
                            ..Volume::default()
                        },
                        Volume {
                            name: "trust".into(),
                            config_map: Some(ConfigMapVolumeSource {
                                name: n.trust.clone(),
                                ..ConfigMapVolumeSource::default()
                            }),
                            ..Volume::default()
                        },
                    ]),
                    ..PodSpec::default()
                }),
            },
            ..StatefulSetSpec::default()
        }),
        ..StatefulSet::default()
    };

    Children {
        service_account,
        role,
        role_binding,
        tls_secret,
        trust: trust_cm,
        members_service,
        public_service,
        pdb,
        stateful_set,
    }
}

/// The relays' permissions in their own namespace: read ring membership. Nothing else (no
/// Secrets: their certificate and keys come from mounted volumes).
pub fn relay_rules() -> Vec<PolicyRule> {
    vec![PolicyRule {
        api_groups: Some(vec!["discovery.k8s.io".into()]),
        resources: Some(vec!["endpointslices".into()]),
        verbs: vec!["get".into(), "list".into(), "watch".into()],
        ..PolicyRule::default()
    }]
}

/// The relays' cluster-wide permissions (ClusterRole [`RELAY_CLUSTER_ROLE`]): watch the
/// DeviceStreams and Devices they serve, in every namespace (revocation, limits), and write the
/// status fields the data plane owns.
pub fn relay_cluster_rules() -> Vec<PolicyRule> {
    let rule = |resources: &[&str], verbs: &[&str]| PolicyRule {
        api_groups: Some(vec![tether_api::GROUP.into()]),
        resources: Some(resources.iter().map(|r| (*r).to_owned()).collect()),
        verbs: verbs.iter().map(|v| (*v).to_owned()).collect(),
        ..PolicyRule::default()
    };
    vec![
        rule(&["devicestreams", "devices"], &["get", "list", "watch"]),
        rule(&["devicestreams/status", "devices/status"], &["patch"]),
    ]
}

/// Name of the ClusterRole holding [`relay_cluster_rules`].
pub const RELAY_CLUSTER_ROLE: &str = "tether-relay";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relaypool::validate::validate;
    use tether_api::RelayPool;

    const POOL: &str = r#"
apiVersion: tether.dev/v1alpha1
kind: RelayPool
metadata: {name: relays, namespace: tether-system, uid: 1234-abcd, generation: 3}
spec:
  relayDomain: relay.example.com
  minReplicas: 2
  maxReplicas: 10
  scaleDownStabilization: 5m
  resources: {requests: {cpu: 100m, memory: 64Mi}}
  service:
    type: LoadBalancer
    port: 443
    annotations: {service.beta.kubernetes.io/aws-load-balancer-type: nlb}
"#;

    fn children() -> Children {
        let pool: RelayPool = serde_yaml::from_str(POOL).unwrap();
        let valid = validate(&pool).unwrap();
        let cert = Issued {
            cert_pem: "CERT".into(),
            key_pem: "KEY".into(),
        };
        let trust = TrustMaterial {
            ca_pem: "CA",
            token_public_key_pem: "PUB",
            trust_domain: "td.example",
        };
        build(&valid, 3, &cert, &trust)
    }

    fn yaml<T: serde::Serialize>(t: &T) -> serde_yaml::Value {
        serde_yaml::to_value(t).unwrap()
    }

    #[test]
    fn every_child_is_owned_labelled_and_namespaced() {
        let c = children();
        let metas = [
            ("ServiceAccount", &c.service_account.metadata),
            ("Role", &c.role.metadata),
            ("RoleBinding", &c.role_binding.metadata),
            ("Secret", &c.tls_secret.metadata),
            ("ConfigMap", &c.trust.metadata),
            ("Service", &c.members_service.metadata),
            ("Service", &c.public_service.metadata),
            ("PodDisruptionBudget", &c.pdb.metadata),
            ("StatefulSet", &c.stateful_set.metadata),
        ];
        for (kind, m) in metas {
            assert_eq!(m.namespace.as_deref(), Some("tether-system"), "{kind}");
            let owners = m.owner_references.as_ref().unwrap();
            assert_eq!(owners.len(), 1, "{kind}");
            assert_eq!(
                (owners[0].kind.as_str(), owners[0].name.as_str()),
                ("RelayPool", "relays")
            );
            assert_eq!(owners[0].controller, Some(true), "{kind}");
            assert_eq!(m.labels.as_ref().unwrap()["app.kubernetes.io/instance"], "relays");
        }
        let names: Vec<_> = metas.iter().map(|(_, m)| m.name.clone().unwrap()).collect();
        assert_eq!(
            names,
            [
                "relays-relay",
                "relays-relay",
                "relays-relay",
                "relays-tls",
                "relays-trust",
                "relays-members",
                "relays",
                "relays",
                "relays"
            ]
        );
    }

    #[test]
    fn stateful_set_runs_hardened_relays() {
        let sts = yaml(&children().stateful_set);
        let expected: serde_yaml::Value = serde_yaml::from_str(
            r#"
replicas: 3
serviceName: relays-members
podManagementPolicy: Parallel
selector: {matchLabels: {app.kubernetes.io/instance: relays, app.kubernetes.io/name: tether-relay}}
"#,
        )
        .unwrap();
        for key in ["replicas", "serviceName", "podManagementPolicy", "selector"] {
            assert_eq!(sts["spec"][key], expected[key], "{key}");
        }
        let pod = &sts["spec"]["template"]["spec"];
        assert_eq!(pod["serviceAccountName"], "relays-relay");
        assert_eq!(pod["terminationGracePeriodSeconds"], 45);
        assert!(
            pod["terminationGracePeriodSeconds"].as_i64().unwrap()
                > DRAIN_GRACE_SECONDS + DRAIN_DEADLINE_SECONDS
        );
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
        let c = &pod["containers"][0];
        assert_eq!(c["image"], "ghcr.io/tether-dev/tether-relay:0.1.0");
        let sc = &c["securityContext"];
        assert_eq!(sc["readOnlyRootFilesystem"], true);
        assert_eq!(sc["allowPrivilegeEscalation"], false);
        assert_eq!(sc["runAsNonRoot"], true);
        assert_eq!(sc["capabilities"]["drop"][0], "ALL");
        assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
        assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/ready");
        assert_eq!(c["readinessProbe"]["httpGet"]["port"], "admin");
        assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/live");
        assert_eq!(c["ports"][0]["containerPort"], 8443);
        assert_eq!(c["ports"][1]["containerPort"], 8444);
        assert_eq!(c["ports"][2]["containerPort"], 9090);
        assert_eq!(c["resources"]["requests"]["cpu"], "100m");
        let env: BTreeMap<String, String> = c["env"]
            .as_sequence()
            .unwrap()
            .iter()
            .filter_map(|e| Some((e["name"].as_str()?.to_owned(), e["value"].as_str()?.to_owned())))
            .collect();
        assert_eq!(env["TETHER_RELAY_DOMAIN"], "relay.example.com");
        assert_eq!(env["TETHER_RELAY_KUBERNETES"], "true");
        assert_eq!(env["TETHER_RELAY_POOL"], "relays");
        assert_eq!(env["TETHER_TRUST_DOMAIN"], "td.example");
        assert_eq!(env["TETHER_RELAY_TLS_CERT"], "/etc/tether/tls/tls.crt");
        assert_eq!(
            env["TETHER_RELAY_TOKEN_PUBLIC_KEY"],
            "/etc/tether/trust/token.pub"
        );
        assert_eq!(env["TETHER_RELAY_CLIENT_CA"], "/etc/tether/trust/ca.crt");
        assert_eq!(env["TETHER_RELAY_LISTEN"], "0.0.0.0:8443");
        assert_eq!(pod["volumes"][0]["secret"]["secretName"], "relays-tls");
        assert_eq!(pod["volumes"][1]["configMap"]["name"], "relays-trust");
    }

    #[test]
    fn env_names_are_flags_of_the_relay() {
        // Every TETHER_* variable we set must be one the relay reads (relay/src/args.rs).
        let args = include_str!("../../../relay/src/args.rs");
        let sts = children().stateful_set;
        let env = sts.spec.unwrap().template.spec.unwrap().containers[0]
            .env
            .clone()
            .unwrap();
        for e in env.iter().filter(|e| e.name.starts_with("TETHER_")) {
            assert!(
                args.contains(&format!("env = \"{}\"", e.name)),
                "{} is not a relay flag",
                e.name
            );
        }
    }

    #[test]
    fn services_and_pdb() {
        let c = children();
        let members = yaml(&c.members_service);
        assert_eq!(members["spec"]["clusterIP"], "None");
        assert_eq!(members["spec"]["publishNotReadyAddresses"], false);
        let public = yaml(&c.public_service);
        assert_eq!(public["spec"]["type"], "LoadBalancer");
        assert_eq!(public["spec"]["ports"][0]["port"], 443);
        assert_eq!(public["spec"]["ports"][0]["targetPort"], "data");
        assert_eq!(
            public["metadata"]["annotations"]["service.beta.kubernetes.io/aws-load-balancer-type"],
            "nlb"
        );
        let pdb = yaml(&c.pdb);
        assert_eq!(pdb["spec"]["maxUnavailable"], 1);
    }

    #[test]
    fn relay_role_reads_only_endpointslices_and_the_cluster_role_writes_only_status() {
        let c = children();
        let rules = c.role.rules.unwrap();
        let mut granted = Vec::new();
        for r in &rules {
            assert_eq!(r.verbs, ["get", "list", "watch"]);
            assert!(r.resource_names.is_none() && r.non_resource_urls.is_none());
            granted.extend(r.resources.clone().unwrap());
        }
        assert_eq!(granted, ["endpointslices"]);
        let cluster = relay_cluster_rules();
        for r in &cluster {
            for res in r.resources.clone().unwrap() {
                let writes = r.verbs.iter().any(|v| v != "get" && v != "list" && v != "watch");
                assert_eq!(writes, res.ends_with("/status"), "{res}: {:?}", r.verbs);
            }
        }
        assert_eq!(c.role_binding.role_ref.name, "relays-relay");
        assert_eq!(c.role_binding.subjects.unwrap()[0].name, "relays-relay");
    }

    #[test]
    fn secret_and_trust_config() {
        let c = children();
        let data = c.tls_secret.data.unwrap();
        assert_eq!(c.tls_secret.type_.as_deref(), Some("kubernetes.io/tls"));
        assert_eq!(data["tls.crt"].0, b"CERT");
        assert_eq!(data["tls.key"].0, b"KEY");
        assert_eq!(data["ca.crt"].0, b"CA");
        assert_eq!(
            c.tls_secret.metadata.annotations.unwrap()[DNS_NAMES_ANNOTATION],
            "relay.example.com,relays.tether-system.svc,\
             relays.tether-system.svc.cluster.local"
        );
        let cm = c.trust.data.unwrap();
        assert_eq!((cm["ca.crt"].as_str(), cm["token.pub"].as_str()), ("CA", "PUB"));
    }

    #[test]
    fn config_hash_is_stable_and_tracks_material() {
        let pool: RelayPool = serde_yaml::from_str(POOL).unwrap();
        let valid = validate(&pool).unwrap();
        let hash = |valid: &Valid, cert: &str, ca: &str, key: &str, domain: &str| {
            let cert = Issued {
                cert_pem: cert.into(),
                key_pem: "KEY".into(),
            };
            let trust = TrustMaterial {
                ca_pem: ca,
                token_public_key_pem: key,
                trust_domain: domain,
            };
            build(valid, 3, &cert, &trust)
                .stateful_set
                .spec
                .unwrap()
                .template
                .metadata
                .unwrap()
                .annotations
                .unwrap()
                .remove(CONFIG_HASH_ANNOTATION)
                .unwrap()
        };
        let base = hash(&valid, "CERT", "CA", "PUB", "td.example");
        assert_eq!(base, hash(&valid, "CERT", "CA", "PUB", "td.example"), "stable");
        let mut other_domain = valid.clone();
        other_domain.spec.relay_domain = "other.example.com".into();
        for (what, changed) in [
            (
                "serving certificate",
                hash(&valid, "CERT2", "CA", "PUB", "td.example"),
            ),
            ("CA", hash(&valid, "CERT", "CA2", "PUB", "td.example")),
            ("token key", hash(&valid, "CERT", "CA", "PUB2", "td.example")),
            ("trust domain", hash(&valid, "CERT", "CA", "PUB", "td2.example")),
            (
                "relay domain",
                hash(&other_domain, "CERT", "CA", "PUB", "td.example"),
            ),
        ] {
            assert_ne!(
                changed, base,
                "changing the {what} must change the hash (restart relays)"
            );
        }
        assert_ne!(fnv1a(&["a", "bc"]), fnv1a(&["ab", "c"]));
        assert_eq!(fnv1a(&[]), 0xcbf2_9ce4_8422_2325);
    }
}
