//! Network namespaces for the WAN profile: sockets opened inside a named namespace
//! (`/run/netns/NAME`, made by `ip netns add`) from this process, and the addresses every system
//! binds and dials, on loopback or across the namespace pair.
//!
//! A socket belongs to the namespace of the thread that created it, so a socket for another
//! namespace is created on a fresh thread that first moves itself there (`setns`), then handed
//! to tokio; the thread ends with it, so no pooled thread is left in a foreign namespace.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::Arc,
};

use anyhow::Context;
use tokio::net::{TcpListener, TcpStream};

/// Runs `f` on a new thread inside namespace `ns` (or right here without one).
///
/// # Errors
/// When the namespace cannot be entered, or `f` fails.
fn in_ns<T: Send + 'static>(
    ns: Option<&str>,
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    let Some(ns) = ns else {
        return Ok(f()?);
    };
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || -> anyhow::Result<T> {
        let file = std::fs::File::open(&path).with_context(|| format!("open {path}"))?;
        rustix::thread::move_into_link_name_space(
            std::os::fd::AsFd::as_fd(&file),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .with_context(|| format!("setns {path}"))?;
        Ok(f()?)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("namespace thread panicked"))?
}

/// An address and the namespace it lives in.
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// The address.
    pub addr: SocketAddr,
    /// Its network namespace (`None`: this process's).
    pub ns: Option<Arc<str>>,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.ns {
            Some(ns) => write!(f, "{} (netns {ns})", self.addr),
            None => write!(f, "{}", self.addr),
        }
    }
}

impl Endpoint {
    /// An endpoint in this process's namespace.
    pub fn local(addr: SocketAddr) -> Self {
        Self { addr, ns: None }
    }

    /// Opens a TCP connection (`TCP_NODELAY` set, as every client of the run does).
    ///
    /// # Errors
    /// Connect failures.
    pub async fn connect(&self) -> anyhow::Result<TcpStream> {
        let tcp = match &self.ns {
            None => TcpStream::connect(self.addr).await?,
            Some(ns) => {
                let (ns, addr) = (ns.clone(), self.addr);
                // A blocking connect on its own thread: WAN connections are few.
                let std = tokio::task::spawn_blocking(move || {
                    in_ns(Some(&ns), move || {
                        let s = std::net::TcpStream::connect(addr)?;
                        s.set_nonblocking(true)?;
                        Ok(s)
                    })
                })
                .await??;
                TcpStream::from_std(std)?
            }
        };
        tcp.set_nodelay(true)?;
        Ok(tcp)
    }
}

/// Binds a listener on `ip:0` inside `ns`.
///
/// # Errors
/// Namespace or bind failures.
pub fn listen(ns: Option<&str>, ip: IpAddr) -> anyhow::Result<TcpListener> {
    let std = in_ns(ns, move || {
        let l = std::net::TcpListener::bind(SocketAddr::new(ip, 0))?;
        l.set_nonblocking(true)?;
        Ok(l)
    })?;
    Ok(TcpListener::from_std(std)?)
}

/// Where the two sides of every system live: the service side (relay, relay-role servers,
/// client-side processes, the harness's clients) and the device side (agent, device-side
/// processes, the target). On loopback both are this namespace's 127.0.0.1; in the WAN profile
/// two namespaces joined by an impaired link, so the device's leg to the relay crosses the WAN.
#[derive(Clone, Debug)]
pub struct Placement {
    /// Service-side namespace.
    pub svc_ns: Option<Arc<str>>,
    /// Device-side namespace.
    pub dev_ns: Option<Arc<str>>,
    /// Service-side address processes bind.
    pub svc_ip: IpAddr,
    /// Device-side address processes bind.
    pub dev_ip: IpAddr,
}

impl Placement {
    /// Everything on this namespace's loopback.
    pub fn loopback() -> Self {
        Self {
            svc_ns: None,
            dev_ns: None,
            svc_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            dev_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        }
    }

    /// Whether the sides are apart (WAN).
    pub fn is_wan(&self) -> bool {
        self.svc_ns.is_some()
    }

    /// The service side's namespace name.
    pub fn svc(&self) -> Option<&str> {
        self.svc_ns.as_deref()
    }

    /// The device side's namespace name.
    pub fn dev(&self) -> Option<&str> {
        self.dev_ns.as_deref()
    }

    /// A service-side endpoint at `port`.
    pub fn svc_at(&self, port: u16) -> Endpoint {
        Endpoint {
            addr: SocketAddr::new(self.svc_ip, port),
            ns: self.svc_ns.clone(),
        }
    }

    /// A device-side endpoint at `port`.
    pub fn dev_at(&self, port: u16) -> Endpoint {
        Endpoint {
            addr: SocketAddr::new(self.dev_ip, port),
            ns: self.dev_ns.clone(),
        }
    }
}
