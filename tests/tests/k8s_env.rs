//! Proves the test control plane of `scripts/k8s-env.sh` behaves like a real cluster: kubectl apply
//! of a CRD and an object, server-side apply and watches through kube-rs, schema validation by the
//! server, RBAC with a minted ServiceAccount token, and helm lint/template/install.
//! Run with `scripts/test-k8s.sh` (see docs/testing.md); without the environment every test prints
//! `skipped: ...` and passes, unless `TETHER_REQUIRE_K8S=1`.

use std::{path::PathBuf, time::Duration};

use anyhow::{Context as _, bail, ensure};
use futures_util::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::{
    core::v1::ConfigMap,
    rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject},
};
use kube::{
    Api, CustomResource, ResourceExt as _,
    api::{ListParams, ObjectMeta, Patch, PatchParams, PostParams},
    runtime::{WatchStreamExt as _, watcher},
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tether_tests::testenv::{FIELD_MANAGER, TestEnv, eventually, run};

/// How long a watch may take to deliver a change on a local, idle API server (generous for CI).
const WATCH_TIMEOUT: Duration = Duration::from_secs(30);
/// RBAC changes reach the authorizer's informer cache within milliseconds; allow for a slow CI box.
const RBAC_TIMEOUT: Duration = Duration::from_secs(15);
const CRD_NAME: &str = "widgets.test.tether.dev";

/// Typed view of the fixture CRD `tests/fixtures/widget-crd.yaml` (the YAML is what is installed).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, JsonSchema)]
#[kube(
    group = "test.tether.dev",
    version = "v1",
    kind = "Widget",
    namespaced,
    status = "WidgetStatus"
)]
struct WidgetSpec {
    size: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    color: Option<String>,
}

/// Status of a [`Widget`].
#[derive(Serialize, Deserialize, Clone, Debug, Default, JsonSchema)]
struct WidgetStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ready: Option<bool>,
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

/// Installs the Widget CRD with `kubectl apply` (server-side, so concurrent tests do not conflict)
/// and waits until it is served.
fn install_widget_crd(env: &TestEnv) -> anyhow::Result<()> {
    run(env
        .kubectl()
        .args(["apply", "--server-side", "-f"])
        .arg(fixture("widget-crd.yaml")))?;
    run(env
        .kubectl()
        .args(["wait", "--for=condition=Established", "--timeout=60s"])
        .arg(format!("crd/{CRD_NAME}")))?;
    Ok(())
}

fn widget(name: &str, size: i64) -> Widget {
    let mut w = Widget::new(name, WidgetSpec { size, color: None });
    w.metadata.managed_fields = None;
    w
}

fn api_error(err: &kube::Error) -> Option<(u16, &str)> {
    match err {
        kube::Error::Api(status) => Some((status.code, status.message.as_str())),
        _ => None,
    }
}

#[tokio::test]
async fn kubectl_applies_crd_and_object() -> anyhow::Result<()> {
    let Some(env) = TestEnv::attach("kubectl_applies_crd_and_object").await else {
        return Ok(());
    };
    install_widget_crd(&env)?;
    env.with_temp_ns("kubectl", |env, ns| async move {
        let out = run(env
            .kubectl()
            .args(["apply", "-n", &ns, "-f"])
            .arg(fixture("widget.yaml")))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        ensure!(
            stdout.contains("widget.test.tether.dev/from-kubectl created"),
            "kubectl said: {stdout}"
        );

        let out = run(env.kubectl().args([
            "get",
            "widget",
            "from-kubectl",
            "-n",
            &ns,
            "-o",
            "jsonpath={.spec.color}",
        ]))?;
        ensure!(
            out.stdout == b"green",
            "color: {}",
            String::from_utf8_lossy(&out.stdout)
        );

        // The same object, typed, through kube-rs.
        let w = Api::<Widget>::namespaced(env.client(), &ns)
            .get("from-kubectl")
            .await?;
        ensure!(
            w.spec.size == 3 && w.spec.color.as_deref() == Some("green"),
            "{w:?}"
        );
        Ok(())
    })
    .await
}

#[tokio::test]
async fn server_side_apply_through_kube_rs() -> anyhow::Result<()> {
    let Some(env) = TestEnv::attach("server_side_apply_through_kube_rs").await else {
        return Ok(());
    };
    install_widget_crd(&env)?;
    env.with_temp_ns("ssa", |env, ns| async move {
        let api = Api::<Widget>::namespaced(env.client(), &ns);
        let pp = PatchParams::apply(FIELD_MANAGER);
        let first = api.patch("ssa", &pp, &Patch::Apply(widget("ssa", 2))).await?;
        ensure!(first.spec.size == 2);
        let managers: Vec<_> = first
            .managed_fields()
            .iter()
            .map(|m| {
                (
                    m.manager.clone().unwrap_or_default(),
                    m.operation.clone().unwrap_or_default(),
                )
            })
            .collect();
        ensure!(
            managers.contains(&(FIELD_MANAGER.to_owned(), "Apply".to_owned())),
            "{managers:?}"
        );

        let second = api.patch("ssa", &pp, &Patch::Apply(widget("ssa", 4))).await?;
        ensure!(
            second.spec.size == 4 && second.metadata.generation == Some(2),
            "{:?}",
            second.metadata
        );

        // The status subresource takes its own apply; the spec is untouched by it.
        let status = json!({
            "apiVersion": "test.tether.dev/v1", "kind": "Widget", "metadata": {"name": "ssa"},
            "status": {"ready": true}
        });
        let patched = api.patch_status("ssa", &pp, &Patch::Apply(&status)).await?;
        ensure!(patched.status.and_then(|s| s.ready) == Some(true) && patched.spec.size == 4);
        Ok(())
    })
    .await
}

#[tokio::test]
async fn watch_sees_a_change() -> anyhow::Result<()> {
    let Some(env) = TestEnv::attach("watch_sees_a_change").await else {
        return Ok(());
    };
    install_widget_crd(&env)?;
    env.with_temp_ns("watch", |env, ns| async move {
        let api = Api::<Widget>::namespaced(env.client(), &ns);
        api.create(&PostParams::default(), &widget("watched", 1)).await?;

        let mut events = watcher(api.clone(), watcher::Config::default())
            .applied_objects()
            .boxed();
        let mut next_size = async || -> anyhow::Result<i64> {
            let w = tokio::time::timeout(WATCH_TIMEOUT, events.try_next())
                .await
                .context("no watch event in time")??
                .context("watch stream ended")?;
            Ok(w.spec.size)
        };
        ensure!(next_size().await? == 1, "initial list");
        let merge = Patch::Merge(json!({"spec": {"size": 7}}));
        api.patch("watched", &PatchParams::default(), &merge).await?;
        ensure!(next_size().await? == 7, "the watch did not deliver the change");
        Ok(())
    })
    .await
}

#[tokio::test]
async fn invalid_object_is_rejected_by_the_schema() -> anyhow::Result<()> {
    let Some(env) = TestEnv::attach("invalid_object_is_rejected_by_the_schema").await else {
        return Ok(());
    };
    install_widget_crd(&env)?;
    env.with_temp_ns("invalid", |env, ns| async move {
        let api = Api::<Widget>::namespaced(env.client(), &ns);
        let mut bad = widget("bad", 99);
        bad.spec.color = Some("purple".into());
        let err = match api.create(&PostParams::default(), &bad).await {
            Ok(w) => bail!("the server accepted an invalid Widget: {w:?}"),
            Err(e) => e,
        };
        let (code, message) = api_error(&err).with_context(|| format!("not an API error: {err:?}"))?;
        ensure!(
            code == 422,
            "expected 422 Unprocessable Entity, got {code}: {message}"
        );
        // The server's own wording (apiextensions-apiserver OpenAPI validation, Kubernetes 1.36).
        let expected = [
            r#"Widget.test.tether.dev "bad" is invalid"#,
            "spec.size: Invalid value: 99: spec.size in body should be less than or equal to 10",
            r#"spec.color: Unsupported value: "purple": supported values: "red", "green", "blue""#,
        ];
        for part in expected {
            ensure!(
                message.contains(part),
                "missing {part:?} in the server's message: {message}"
            );
        }
        ensure!(api.get_opt("bad").await?.is_none(), "rejected object was stored");
        Ok(())
    })
    .await
}

#[tokio::test]
async fn service_account_token_gets_403_until_a_role_is_bound() -> anyhow::Result<()> {
    let Some(env) = TestEnv::attach("service_account_token_gets_403_until_a_role_is_bound").await else {
        return Ok(());
    };
    env.with_temp_ns("rbac", |env, ns| async move {
        let restricted = env.service_account_client(&ns, "restricted").await?;
        let as_sa = Api::<ConfigMap>::namespaced(restricted, &ns);

        let err = match as_sa.list(&ListParams::default()).await {
            Ok(_) => bail!("an unbound ServiceAccount could list ConfigMaps"),
            Err(e) => e,
        };
        let (code, message) = api_error(&err).with_context(|| format!("not an API error: {err:?}"))?;
        ensure!(code == 403, "expected 403, got {code}: {message}");
        let who =
            format!(r#"User "system:serviceaccount:{ns}:restricted" cannot list resource "configmaps""#);
        ensure!(message.contains(&who), "unexpected message: {message}");

        let admin = env.client();
        let role = Role {
            metadata: ObjectMeta {
                name: Some("read-configmaps".into()),
                ..ObjectMeta::default()
            },
            rules: Some(vec![PolicyRule {
                api_groups: Some(vec![String::new()]),
                resources: Some(vec!["configmaps".into()]),
                verbs: vec!["get".into(), "list".into(), "watch".into()],
                ..PolicyRule::default()
            }]),
        };
        Api::<Role>::namespaced(admin.clone(), &ns)
            .create(&PostParams::default(), &role)
            .await?;
        let binding = RoleBinding {
            metadata: ObjectMeta {
                name: Some("restricted-reads".into()),
                ..ObjectMeta::default()
            },
            role_ref: RoleRef {
                api_group: Some("rbac.authorization.k8s.io".into()),
                kind: "Role".into(),
                name: "read-configmaps".into(),
            },
            subjects: Some(vec![Subject {
                kind: "ServiceAccount".into(),
                name: "restricted".into(),
                namespace: Some(ns.clone()),
                ..Subject::default()
            }]),
        };
        Api::<RoleBinding>::namespaced(admin, &ns)
            .create(&PostParams::default(), &binding)
            .await?;

        eventually(RBAC_TIMEOUT, || async {
            Ok(as_sa.list(&ListParams::default()).await?)
        })
        .await?;
        // The Role grants reads only: writes are still forbidden.
        let cm = ConfigMap {
            metadata: ObjectMeta {
                name: Some("nope".into()),
                ..ObjectMeta::default()
            },
            ..ConfigMap::default()
        };
        let err = as_sa
            .create(&PostParams::default(), &cm)
            .await
            .err()
            .context("create was allowed")?;
        ensure!(api_error(&err).map(|e| e.0) == Some(403), "{err:?}");
        Ok(())
    })
    .await
}

#[tokio::test]
async fn helm_lints_templates_and_installs_a_chart() -> anyhow::Result<()> {
    let Some(env) = TestEnv::attach("helm_lints_templates_and_installs_a_chart").await else {
        return Ok(());
    };
    let chart = fixture("tiny-chart");
    let out = run(env.helm().arg("lint").arg(&chart))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        stdout.contains("1 chart(s) linted, 0 chart(s) failed"),
        "helm lint: {stdout}"
    );

    let out = run(env
        .helm()
        .args(["template", "rel"])
        .arg(&chart)
        .args(["--set", "greeting=hi"]))?;
    let manifest = String::from_utf8_lossy(&out.stdout);
    ensure!(
        manifest.contains("name: rel-tiny") && manifest.contains(r#"greeting: "hi""#),
        "helm template: {manifest}"
    );

    env.with_temp_ns("helm", |env, ns| async move {
        run(env
            .helm()
            .args(["install", "rel"])
            .arg(&chart)
            .args(["-n", &ns, "--wait", "--timeout", "60s"]))?;
        let cm = Api::<ConfigMap>::namespaced(env.client(), &ns)
            .get("rel-tiny")
            .await?;
        let greeting = cm
            .data
            .as_ref()
            .and_then(|d| d.get("greeting"))
            .map(String::as_str);
        ensure!(greeting == Some("hello"), "{cm:?}");
        let out = run(env.helm().args(["list", "-n", &ns, "-o", "json"]))?;
        let releases: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        ensure!(
            releases[0]["name"] == "rel" && releases[0]["status"] == "deployed",
            "{releases}"
        );
        run(env.helm().args(["uninstall", "rel", "-n", &ns, "--wait"]))?;
        Ok(())
    })
    .await
}

#[tokio::test]
async fn temp_namespaces_are_unique_and_removed() -> anyhow::Result<()> {
    let Some(env) = TestEnv::attach("temp_namespaces_are_unique_and_removed").await else {
        return Ok(());
    };
    let (a, b) = (env.temp_ns("uniq").await?, env.temp_ns("uniq").await?);
    ensure!(a.name() != b.name() && a.name().starts_with("tt-uniq-"));
    let name = a.name().to_owned();
    drop(a);
    drop(b);
    // Deletion sets deletionTimestamp at once; with kube-controller-manager running the namespace
    // controller then removes it completely.
    let nss = Api::<k8s_openapi::api::core::v1::Namespace>::all(env.client());
    let ns = nss.get_opt(&name).await?;
    if ns
        .as_ref()
        .is_some_and(|n| n.metadata.deletion_timestamp.is_none())
    {
        bail!("namespace {name} was not deleted");
    }
    Ok(())
}

#[test]
fn skipping_is_visible_and_required_mode_fails() {
    // Without the environment, attach() must return None (skip) or, with TETHER_REQUIRE_K8S=1,
    // panic. Checked in a child process so this test does not depend on the caller's environment.
    if std::env::var_os("TETHER_TESTS_CHILD").is_some() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        assert!(rt.block_on(TestEnv::attach("child")).is_none());
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let child = |require: &str| {
        std::process::Command::new(&exe)
            .args([
                "--exact",
                "skipping_is_visible_and_required_mode_fails",
                "--nocapture",
            ])
            .env("TETHER_TESTS_CHILD", "1")
            .env_remove(tether_tests::testenv::ENV_KUBECONFIG)
            .env(tether_tests::testenv::ENV_REQUIRE, require)
            .output()
            .unwrap()
    };
    let skipped = child("0");
    assert!(skipped.status.success());
    assert!(
        String::from_utf8_lossy(&skipped.stderr)
            .contains("skipped: child: TETHER_TEST_KUBECONFIG is not set")
    );
    let required = child("1");
    assert!(
        !required.status.success(),
        "TETHER_REQUIRE_K8S=1 without an environment must fail"
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&required.stdout),
        String::from_utf8_lossy(&required.stderr)
    );
    assert!(
        text.contains("TETHER_REQUIRE_K8S=1 but TETHER_TEST_KUBECONFIG"),
        "{text}"
    );
}
