//! Outbound TCP, directly or through an HTTP `CONNECT` proxy (`HTTPS_PROXY`, with basic auth).
//!
//! Factory networks often allow only outbound 443 through a proxy, so both the agent and the CLI
//! dial through this module. `NO_PROXY` is honoured for exact hosts and domain suffixes.

use std::time::Duration;

use base64::Engine;
use percent_encoding::percent_decode_str;
use tether_proto::head::{Parsed, parse_response};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    time::timeout,
};
use url::{Host, Url};

/// Time allowed for the TCP connect and, when proxied, the proxy's answer.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// An HTTP proxy to tunnel through.
#[derive(Clone)]
pub struct Proxy {
    /// A name, or an IP address (an IPv6 one without the URL's brackets).
    host: Host<String>,
    port: u16,
    /// `user:password` for `Proxy-Authorization: Basic`, if any: bytes, as RFC 7617 leaves the
    /// charset to the two sides and a percent-escape may spell any byte. Secret.
    credentials: Option<Vec<u8>>,
    no_proxy: Vec<String>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("host", &self.host.to_string())
            .field("port", &self.port)
            .field("credentials", &self.credentials.as_ref().map(|_| "MASKED"))
            .field("no_proxy", &self.no_proxy)
            .finish()
    }
}

/// Why a proxy setting is unusable.
#[derive(Debug, thiserror::Error)]
#[error("invalid proxy URL (expected http://[user:password@]host:port): {0}")]
pub struct ProxyError(String);

impl Proxy {
    /// Parses a proxy URL such as `http://user:pass@proxy.local:3128`.
    ///
    /// # Errors
    /// When the URL is not `http://` with a host.
    pub fn parse(url: &str, no_proxy: &str) -> Result<Self, ProxyError> {
        let parsed = Url::parse(url).map_err(|e| ProxyError(e.to_string()))?;
        if parsed.scheme() != "http" {
            return Err(ProxyError(format!(
                "scheme {:?} is not supported",
                parsed.scheme()
            )));
        }
        // The host enum, not `host_str()`: that keeps an IPv6 address's brackets, which
        // `TcpStream::connect` cannot resolve.
        let host = parsed
            .host()
            .ok_or_else(|| ProxyError("no host".into()))?
            .to_owned();
        let port = parsed.port().unwrap_or(80);
        // Userinfo is percent-encoded (RFC 3986 §3.2.1): `+` and `&` are literal there, unlike
        // in a form body, so this must not be form decoding.
        let credentials = (!parsed.username().is_empty()).then(|| {
            let mut creds: Vec<u8> = percent_decode_str(parsed.username()).collect();
            creds.push(b':');
            creds.extend(percent_decode_str(parsed.password().unwrap_or("")));
            creds
        });
        let no_proxy = no_proxy
            .split(',')
            .map(|s| s.trim().trim_start_matches('.').to_ascii_lowercase())
            .filter(|s| !s.is_empty())
            .collect();
        Ok(Self {
            host,
            port,
            credentials,
            no_proxy,
        })
    }

    /// Reads `HTTPS_PROXY`/`https_proxy` and `NO_PROXY`/`no_proxy` from the environment.
    ///
    /// # Errors
    /// When the variable is set but not a valid proxy URL.
    pub fn from_env() -> Result<Option<Self>, ProxyError> {
        let var = |a: &str, b: &str| std::env::var(a).or_else(|_| std::env::var(b)).ok();
        match var("HTTPS_PROXY", "https_proxy").filter(|v| !v.is_empty()) {
            Some(url) => Self::parse(&url, &var("NO_PROXY", "no_proxy").unwrap_or_default()).map(Some),
            None => Ok(None),
        }
    }

    fn bypasses(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        self.no_proxy
            .iter()
            .any(|n| n == "*" || host == *n || host.ends_with(&format!(".{n}")))
    }
}

/// Opens a TCP connection to `host:port`, through `proxy` unless `NO_PROXY` exempts the host.
///
/// # Errors
/// Connect failures, a timeout, or a proxy that refuses (its status is in the message).
pub async fn dial(host: &str, port: u16, proxy: Option<&Proxy>) -> std::io::Result<TcpStream> {
    let stream = match proxy.filter(|p| !p.bypasses(host)) {
        None => timeout(DIAL_TIMEOUT, TcpStream::connect((host, port)))
            .await
            .map_err(|_| timed_out(host, port))??,
        Some(p) => timeout(DIAL_TIMEOUT, via_proxy(p, host, port))
            .await
            .map_err(|_| timed_out(host, port))??,
    };
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Most bytes a device connection leaves unsent in the kernel's socket buffer.
///
/// All streams of a device share one TCP connection. Without a bound, a bulk transfer fills the
/// kernel send buffer (up to 4 MiB on Linux) and an interactive stream's next frame waits behind
/// all of it (tens of milliseconds). With the bound, HTTP/2 keeps the backlog in its own per-stream
/// queues and interleaves streams fairly, at almost no cost in throughput.
pub const DEVICE_NOTSENT_LOWAT: u32 = 128 * 1024;

/// Tunes a device connection's socket for fairness between its streams: `TCP_NODELAY` and
/// [`DEVICE_NOTSENT_LOWAT`]. Failures are ignored (the option is an optimisation, Linux-only).
pub fn tune_device_socket(stream: &TcpStream) {
    let _ = stream.set_nodelay(true);
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        let _ = socket2::SockRef::from(stream).set_tcp_notsent_lowat(DEVICE_NOTSENT_LOWAT);
    }
}

fn timed_out(host: &str, port: u16) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("connecting to {host}:{port} timed out"),
    )
}

async fn via_proxy(proxy: &Proxy, host: &str, port: u16) -> std::io::Result<TcpStream> {
    let mut stream = match &proxy.host {
        Host::Domain(name) => TcpStream::connect((name.as_str(), proxy.port)).await?,
        Host::Ipv4(ip) => TcpStream::connect((*ip, proxy.port)).await?,
        Host::Ipv6(ip) => TcpStream::connect((*ip, proxy.port)).await?,
    };
    let target = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let mut head = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    if let Some(creds) = &proxy.credentials {
        let encoded = base64::engine::general_purpose::STANDARD.encode(creds);
        head.push_str(&format!("Proxy-Authorization: Basic {encoded}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await?;
    // Read the answer byte by byte: nothing after it may be consumed, since the TLS handshake that
    // follows belongs to the caller. It is one short head, once per connection.
    let mut buf = Vec::with_capacity(256);
    loop {
        let b = stream.read_u8().await?;
        buf.push(b);
        if buf.ends_with(b"\r\n\r\n") || buf.len() >= tether_proto::head::MAX_HEAD_LEN {
            break;
        }
    }
    match parse_response(&buf) {
        Ok(Parsed::Complete(resp, _)) if (200..300).contains(&resp.status) => Ok(stream),
        Ok(Parsed::Complete(resp, _)) => Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "proxy {}:{} refused CONNECT {target}: HTTP {}",
                proxy.host, proxy.port, resp.status
            ),
        )),
        _ => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("proxy {}:{} sent a malformed answer", proxy.host, proxy.port),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[test]
    fn parses_proxy_urls() {
        let p = Proxy::parse("http://us%40er:p%3Ass@proxy.local:3128", "localhost, .internal").unwrap();
        assert_eq!((p.host.to_string().as_str(), p.port), ("proxy.local", 3128));
        assert_eq!(p.credentials.as_deref(), Some(&b"us@er:p:ss"[..]));
        assert!(p.bypasses("localhost") && p.bypasses("relay.internal") && !p.bypasses("relay.example.com"));
        assert!(!format!("{p:?}").contains("p:ss"));
        assert!(Proxy::parse("socks5://x:1", "").is_err());
        assert!(Proxy::parse("not a url", "").is_err());
    }

    /// `+` and `&` are literal in userinfo (form decoding made `+` a space and split at `&`);
    /// `%25` is `%`; a `:` after the first belongs to the password.
    #[test]
    fn credentials_are_percent_decoded_not_form_decoded() {
        let p = Proxy::parse("http://a+b&c:p+ss&w%25rd:x%3Ay@proxy.local:3128", "").unwrap();
        assert_eq!(p.credentials.as_deref(), Some(&b"a+b&c:p+ss&w%rd:x:y"[..]));
        // A percent-escape may spell a byte that is not UTF-8; it is sent as that byte.
        let p = Proxy::parse("http://u:%FF@proxy.local:1", "").unwrap();
        assert_eq!(p.credentials.as_deref(), Some(&b"u:\xff"[..]));
        let p = Proxy::parse("http://proxy.local:1", "").unwrap();
        assert_eq!(p.credentials, None);
    }

    #[test]
    fn ip_proxy_addresses_lose_their_brackets() {
        let p = Proxy::parse("http://[::1]:3128", "").unwrap();
        assert_eq!(p.host, Host::<String>::Ipv6(std::net::Ipv6Addr::LOCALHOST));
        assert_eq!(p.host.to_string(), "[::1]");
        let p = Proxy::parse("http://127.0.0.1:3128", "").unwrap();
        assert_eq!(p.host, Host::<String>::Ipv4(std::net::Ipv4Addr::LOCALHOST));
        assert_eq!(Proxy::parse("http://[::1]", "").unwrap().port, 80);
    }

    /// A one-connection CONNECT proxy on `listener`: reads the request head, answers 200 and
    /// splices to `127.0.0.1:target_port`. Resolves with the head it read.
    fn scripted_proxy(listener: TcpListener, target_port: u16) -> tokio::task::JoinHandle<String> {
        tokio::spawn(async move {
            let (mut client, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            while !head.ends_with(b"\r\n\r\n") {
                head.push(client.read_u8().await.unwrap());
            }
            let mut upstream = TcpStream::connect(("127.0.0.1", target_port)).await.unwrap();
            client.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
            tokio::spawn(async move { tokio::io::copy_bidirectional(&mut client, &mut upstream).await });
            String::from_utf8(head).unwrap()
        })
    }

    /// Dials `127.0.0.1:<target>` through a scripted proxy on `proxy_ip` with `userinfo`, checks
    /// bytes arrive, and returns the head the proxy read.
    async fn tunnel_through(proxy_ip: &str, userinfo: &str) -> (String, u16) {
        let target = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target_port = target.local_addr().unwrap().port();
        let proxy = TcpListener::bind((proxy_ip, 0)).await.unwrap();
        let proxy_port = proxy.local_addr().unwrap().port();
        let head = scripted_proxy(proxy, target_port);
        let host = if proxy_ip.contains(':') {
            format!("[{proxy_ip}]")
        } else {
            proxy_ip.to_owned()
        };
        let p = Proxy::parse(&format!("http://{userinfo}@{host}:{proxy_port}"), "").unwrap();
        let mut s = dial("127.0.0.1", target_port, Some(&p)).await.unwrap();
        let (mut t, _) = target.accept().await.unwrap();
        s.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        t.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");
        (head.await.unwrap(), target_port)
    }

    /// Through a proxy listening on `[::1]` only, the exact `Proxy-Authorization` bytes for a
    /// password with every character form decoding mangled.
    #[tokio::test]
    async fn tunnels_through_an_ipv6_proxy_with_special_characters_in_the_password() {
        let (head, _) = tunnel_through("::1", "u:p+ss&w%25rd%3Ax").await;
        let expected = base64::engine::general_purpose::STANDARD.encode("u:p+ss&w%rd:x");
        assert!(
            head.contains(&format!("\r\nProxy-Authorization: Basic {expected}\r\n")),
            "{head}"
        );
    }

    #[tokio::test]
    async fn tunnels_through_a_connect_proxy_with_basic_auth() {
        let (head, target_port) = tunnel_through("127.0.0.1", "u:p").await;
        assert!(
            head.starts_with(&format!("CONNECT 127.0.0.1:{target_port} HTTP/1.1")),
            "{head}"
        );
        assert!(head.contains("Proxy-Authorization: Basic dTpw"), "{head}"); // base64("u:p")
    }

    #[tokio::test]
    async fn reports_proxy_refusal() {
        let proxy = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = proxy.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut c, _) = proxy.accept().await.unwrap();
            let mut head = Vec::new();
            while !head.ends_with(b"\r\n\r\n") {
                head.push(c.read_u8().await.unwrap());
            }
            c.write_all(b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n")
                .await
                .unwrap();
        });
        let p = Proxy::parse(&format!("http://127.0.0.1:{port}"), "").unwrap();
        let err = dial("relay.example.com", 443, Some(&p)).await.unwrap_err();
        assert!(err.to_string().contains("407"), "{err}");
    }
}
