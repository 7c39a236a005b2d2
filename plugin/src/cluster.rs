//! The API client from the user's kubeconfig (kubectl's rules), and API errors turned into
//! [`Error`]s a person can act on.

use kube::{
    Client, Config,
    config::{KubeConfigOptions, Kubeconfig},
};

use crate::{Error, Result, args::KubeArgs};

/// Field manager for server-side apply by the plugin.
pub const FIELD_MANAGER: &str = "kubectl-tether";
/// The shipped ClusterRole for people who open streams (chart: files/rbac/, deploy/rbac/).
pub const STREAM_USER_ROLE: &str = "tether-stream-user";
/// The shipped ClusterRole for people who enrol devices (chart: files/rbac/, deploy/rbac/).
pub const DEVICE_ADMIN_ROLE: &str = "tether-device-admin";

/// A connection to the cluster, in the namespace the user chose.
#[derive(Clone)]
pub struct Cluster {
    /// The API client, authenticated as the user.
    pub client: Client,
    /// The namespace of Devices and DeviceStreams.
    pub namespace: String,
    /// The flags it was built from (passed on to the `connect` subprocess of `ssh`).
    pub args: KubeArgs,
}

impl Cluster {
    /// Loads the kubeconfig like kubectl: `--kubeconfig` (only that file), else `$KUBECONFIG` or
    /// `~/.kube/config`, else the in-cluster service account; `--context` picks the context and
    /// `-n` overrides the context's namespace.
    ///
    /// # Errors
    /// [`Error::Kubeconfig`] when no configuration can be loaded.
    pub async fn connect(args: &KubeArgs) -> Result<Self> {
        let options = KubeConfigOptions {
            context: args.context.clone(),
            ..KubeConfigOptions::default()
        };
        let bad = |e: &dyn std::fmt::Display| Error::Kubeconfig(e.to_string());
        let config = match &args.kubeconfig {
            Some(path) => {
                let kc = Kubeconfig::read_from(path)
                    .map_err(|e| Error::Kubeconfig(format!("{}: {e}", path.display())))?;
                Config::from_custom_kubeconfig(kc, &options)
                    .await
                    .map_err(|e| bad(&e))?
            }
            None if args.context.is_some() => Config::from_kubeconfig(&options).await.map_err(|e| bad(&e))?,
            None => Config::infer().await.map_err(|e| bad(&e))?,
        };
        let namespace = args
            .namespace
            .clone()
            .unwrap_or_else(|| config.default_namespace.clone());
        let client = Client::try_from(config).map_err(|e| bad(&e))?;
        Ok(Self {
            client,
            namespace,
            args: args.clone(),
        })
    }

    /// The flags that select this cluster, user and namespace, for a subprocess.
    pub fn flags(&self) -> Vec<String> {
        let mut flags = Vec::new();
        if let Some(path) = &self.args.kubeconfig {
            // Absolute, so the subprocess finds it whatever its working directory.
            let path = std::path::absolute(path).unwrap_or_else(|_| path.clone());
            flags.extend(["--kubeconfig".to_owned(), path.display().to_string()]);
        }
        if let Some(context) = &self.args.context {
            flags.extend(["--context".to_owned(), context.clone()]);
        }
        flags.extend(["--namespace".to_owned(), self.namespace.clone()]);
        flags
    }

    /// Maps an API error of `verb` on `resource` to an actionable [`Error`]: 403 names the verb,
    /// resource, namespace and the shipped role that grants it.
    pub fn api_error(
        &self,
        verb: &'static str,
        resource: &'static str,
        role: &'static str,
    ) -> impl FnOnce(kube::Error) -> Error + '_ {
        move |e| match e {
            kube::Error::Api(status) if status.code == 403 => Error::Forbidden {
                verb,
                resource,
                namespace: self.namespace.clone(),
                role,
                message: status.message.clone(),
            },
            source => Error::Api {
                action: format!("{verb} {resource} in namespace {:?}", self.namespace),
                source,
            },
        }
    }
}

/// Whether `e` is the API server's 404.
pub fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}
