//! Attach tests to the real Kubernetes control plane of `scripts/k8s-env.sh`.
//!
//! The environment is found through [`ENV_KUBECONFIG`] (an admin kubeconfig). Without it a test
//! prints a visible `skipped: ...` line and returns, unless [`ENV_REQUIRE`] is `1` (CI), in which
//! case it fails. Each test gets its own namespace ([`TestEnv::temp_ns`] / [`TestEnv::with_temp_ns`])
//! that is deleted when the guard drops, also when the test panics.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use tether_tests::testenv::TestEnv;
//! let Some(env) = TestEnv::attach("demo").await else { return Ok(()) };
//! env.with_temp_ns("demo", |env, ns| async move {
//!     let sa_client = env.service_account_client(&ns, "restricted").await?;
//!     # let _ = sa_client;
//!     anyhow::Ok(())
//! })
//! .await
//! # }
//! ```

use std::{
    future::Future,
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use anyhow::{Context as _, bail};
use k8s_openapi::api::{
    authentication::v1::{TokenRequest, TokenRequestSpec},
    core::v1::{Namespace, ServiceAccount},
};
use kube::{
    Api, Client, Config,
    api::{DeleteParams, ObjectMeta, PostParams},
    config::{AuthInfo, KubeConfigOptions, Kubeconfig},
};

/// Path of the admin kubeconfig written by `scripts/k8s-env.sh up`.
pub const ENV_KUBECONFIG: &str = "TETHER_TEST_KUBECONFIG";
/// When `1`, a missing environment is a test failure instead of a skip (set by CI).
pub const ENV_REQUIRE: &str = "TETHER_REQUIRE_K8S";
/// Directory holding `kubectl` and `helm` (exported by `scripts/k8s-env.sh env`).
pub const ENV_BIN: &str = "TETHER_K8S_BIN";
/// Field manager for server-side apply done by tests.
pub const FIELD_MANAGER: &str = "tether-tests";
/// Label put on every namespace created by [`TestEnv::temp_ns`], to find leftovers.
pub const TEMP_NS_LABEL: &str = "tether.dev/test-namespace";
/// Lifetime of minted ServiceAccount tokens: longer than any test, short enough to be harmless.
const TOKEN_SECONDS: i64 = 3600;

/// A connection to the running test control plane.
#[derive(Clone)]
pub struct TestEnv {
    kubeconfig: PathBuf,
    config: Config,
    client: Client,
    bin_dir: Option<PathBuf>,
}

impl TestEnv {
    /// Attaches to the environment named by [`ENV_KUBECONFIG`].
    ///
    /// Returns `None` after printing `skipped: <test>: ...` (straight to stderr, so it shows even
    /// though libtest captures output) when the variable is unset.
    ///
    /// # Panics
    /// When the variable is unset and [`ENV_REQUIRE`] is `1`, or when it is set but the kubeconfig
    /// cannot be loaded: a configured but broken environment must never look like a pass.
    pub async fn attach(test: &str) -> Option<Self> {
        let Some(path) = std::env::var_os(ENV_KUBECONFIG).filter(|p| !p.is_empty()) else {
            if std::env::var(ENV_REQUIRE).is_ok_and(|v| v == "1") {
                panic!(
                    "{test}: {ENV_REQUIRE}=1 but {ENV_KUBECONFIG} is not set: the Kubernetes test \
                     environment is missing (start it with scripts/test-k8s.sh)"
                );
            }
            let _ = writeln!(
                std::io::stderr(),
                "skipped: {test}: {ENV_KUBECONFIG} is not set (run scripts/test-k8s.sh, see docs/testing.md)"
            );
            return None;
        };
        match Self::load(PathBuf::from(path)).await {
            Ok(env) => Some(env),
            Err(e) => panic!("{test}: cannot attach to the Kubernetes test environment: {e:#}"),
        }
    }

    async fn load(kubeconfig: PathBuf) -> anyhow::Result<Self> {
        let kc = Kubeconfig::read_from(&kubeconfig)
            .with_context(|| format!("reading {}", kubeconfig.display()))?;
        let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
        let client = Client::try_from(config.clone())?;
        // `scripts/k8s-env.sh up` records the binaries' directory next to the kubeconfig.
        let bin_dir = std::env::var_os(ENV_BIN).map(PathBuf::from).or_else(|| {
            let f = kubeconfig.parent()?.join("bin-dir");
            Some(PathBuf::from(std::fs::read_to_string(f).ok()?.trim()))
        });
        Ok(Self {
            kubeconfig,
            config,
            client,
            bin_dir,
        })
    }

    /// An admin client (`system:masters`: bypasses RBAC).
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// The admin client configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Path of the admin kubeconfig.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// A `kubectl` command (the one built for this server's version) with `--kubeconfig` set.
    pub fn kubectl(&self) -> Command {
        let mut cmd = Command::new(self.tool("kubectl"));
        cmd.arg("--kubeconfig").arg(&self.kubeconfig);
        cmd
    }

    /// A `helm` command with `--kubeconfig` set.
    pub fn helm(&self) -> Command {
        let mut cmd = Command::new(self.tool("helm"));
        cmd.arg("--kubeconfig").arg(&self.kubeconfig);
        cmd
    }

    /// Path of the environment's `name` binary (`kubectl`, `helm`), for commands that must not
    /// get the admin `--kubeconfig` (e.g. a plugin run as another user).
    pub fn tool(&self, name: &str) -> PathBuf {
        match &self.bin_dir {
            Some(dir) => dir.join(name),
            None => PathBuf::from(name),
        }
    }

    /// Creates a namespace named `tt-<prefix>-<random>` that is deleted when the guard drops.
    ///
    /// # Errors
    /// When the API server refuses the namespace.
    pub async fn temp_ns(&self, prefix: &str) -> anyhow::Result<TempNs> {
        let ns = Namespace {
            metadata: ObjectMeta {
                generate_name: Some(format!("tt-{prefix}-")),
                labels: Some([(TEMP_NS_LABEL.to_owned(), "true".to_owned())].into()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        let created = Api::<Namespace>::all(self.client())
            .create(&PostParams::default(), &ns)
            .await
            .context("creating a temporary namespace")?;
        let name = created.metadata.name.context("namespace without a name")?;
        Ok(TempNs {
            name,
            config: self.config.clone(),
        })
    }

    /// Runs `f` with a clone of this environment and a fresh namespace's name; the namespace is
    /// deleted afterwards, also when `f` panics or fails.
    ///
    /// # Errors
    /// The error of `f`, or a failure to create the namespace.
    pub async fn with_temp_ns<F, Fut, T>(&self, prefix: &str, f: F) -> anyhow::Result<T>
    where
        F: FnOnce(TestEnv, String) -> Fut,
        Fut: Future<Output = anyhow::Result<T>>,
    {
        let guard = self.temp_ns(prefix).await?;
        let out = f(self.clone(), guard.name().to_owned()).await;
        drop(guard);
        out
    }

    /// Mints a token for ServiceAccount `ns/sa` through the TokenRequest API (creating the
    /// ServiceAccount if it does not exist) and returns a client that authenticates with it, i.e.
    /// runs as `system:serviceaccount:<ns>:<sa>` under RBAC.
    ///
    /// # Errors
    /// When the ServiceAccount cannot be created or the token request fails.
    pub async fn service_account_client(&self, ns: &str, sa: &str) -> anyhow::Result<Client> {
        let token = self.service_account_token(ns, sa).await?;
        let mut config = self.config.clone();
        config.auth_info = AuthInfo {
            token: Some(token.into()),
            ..AuthInfo::default()
        };
        Ok(Client::try_from(config)?)
    }

    /// The raw token of [`TestEnv::service_account_client`].
    ///
    /// # Errors
    /// When the ServiceAccount cannot be created or the token request fails.
    pub async fn service_account_token(&self, ns: &str, sa: &str) -> anyhow::Result<String> {
        let api = Api::<ServiceAccount>::namespaced(self.client(), ns);
        if api.get_opt(sa).await?.is_none() {
            let account = ServiceAccount {
                metadata: ObjectMeta {
                    name: Some(sa.to_owned()),
                    ..ObjectMeta::default()
                },
                ..ServiceAccount::default()
            };
            api.create(&PostParams::default(), &account)
                .await
                .context("creating the ServiceAccount")?;
        }
        let request = TokenRequest {
            spec: Some(TokenRequestSpec {
                expiration_seconds: Some(TOKEN_SECONDS),
                ..TokenRequestSpec::default()
            }),
            ..TokenRequest::default()
        };
        let minted = api
            .create_token_request(sa, &PostParams::default(), &request)
            .await
            .with_context(|| format!("TokenRequest for {ns}/{sa}"))?;
        match minted.status.and_then(|s| s.token) {
            Some(token) if !token.is_empty() => Ok(token),
            _ => bail!("TokenRequest for {ns}/{sa} returned no token"),
        }
    }
}

/// Runs a command and returns its output, failing with its stderr when it exits non-zero.
///
/// # Errors
/// When the command cannot start or exits unsuccessfully.
pub fn run(cmd: &mut Command) -> anyhow::Result<Output> {
    let out = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

/// Polls `f` every 200 ms until it returns `Ok`, or returns its last error after `timeout`.
///
/// # Errors
/// The last error of `f` once `timeout` has passed.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return Err(e.context(format!("still failing after {timeout:?}")));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// A temporary namespace, deleted (in the background on the server) when dropped.
pub struct TempNs {
    name: String,
    config: Config,
}

impl TempNs {
    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for TempNs {
    fn drop(&mut self) {
        // Drop cannot await, and the test's runtime (often current-thread) is blocked right here, so
        // the delete runs on its own thread with its own runtime and its own client: a client built
        // on the test's runtime would wait forever for that runtime's tasks.
        let (name, config) = (self.name.clone(), self.config.clone());
        let joined = std::thread::spawn(move || -> anyhow::Result<()> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let api = Api::<Namespace>::all(Client::try_from(config)?);
                match api.delete(&name, &DeleteParams::background()).await {
                    Ok(_) => Ok(()),
                    Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
                    Err(e) => Err(e.into()),
                }
            })
        })
        .join();
        if !matches!(joined, Ok(Ok(()))) {
            let _ = writeln!(
                std::io::stderr(),
                "warning: could not delete test namespace {}",
                self.name
            );
        }
    }
}
