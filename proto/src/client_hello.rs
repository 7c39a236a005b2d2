//! Reads the SNI and ALPN offers from a TLS ClientHello without terminating TLS.
//!
//! A relay peeks at the first bytes of a connection to learn which device it is for, so it can route
//! it (locally, or as raw bytes to the owning relay) before any crypto. The parser accepts a
//! ClientHello split across several handshake records, is bounded by [`MAX_CLIENT_HELLO_LEN`], and
//! never panics on any input (see the fuzz target and the random-input test).

/// Largest ClientHello we buffer. Real ones are 0.3–2 KiB (≈1.5 KiB with a post-quantum key share);
/// 16 KiB is one full TLS record.
pub const MAX_CLIENT_HELLO_LEN: usize = 16 * 1024;

const CONTENT_HANDSHAKE: u8 = 22;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
const EXT_SERVER_NAME: u16 = 0;
const EXT_ALPN: u16 = 16;

/// What the relay needs from a ClientHello.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientHelloInfo {
    /// The host name from the `server_name` extension.
    pub server_name: Option<String>,
    /// ALPN protocol ids offered, in the client's order.
    pub alpn: Vec<Vec<u8>>,
}

/// Why the bytes are not a usable ClientHello.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientHelloError {
    /// The first record is not a TLS handshake (e.g. plain HTTP sent to the TLS port).
    #[error("not a TLS handshake (plain-text client on the TLS port?)")]
    NotTls,
    /// The first handshake message is not a ClientHello.
    #[error("first TLS handshake message is not a ClientHello")]
    NotClientHello,
    /// The ClientHello is larger than [`MAX_CLIENT_HELLO_LEN`].
    #[error("ClientHello exceeds {MAX_CLIENT_HELLO_LEN} bytes")]
    TooLarge,
    /// The ClientHello is split into more than [`MAX_RECORDS`] records.
    #[error("ClientHello split into more than {MAX_RECORDS} records")]
    TooManyRecords,
    /// A length field points outside its container.
    #[error("malformed ClientHello: {0}")]
    Malformed(&'static str),
}

/// Result of parsing a possibly incomplete ClientHello.
#[derive(Debug, PartialEq, Eq)]
pub enum Peeked {
    /// The ClientHello was complete.
    Complete(ClientHelloInfo),
    /// More bytes are needed.
    Incomplete,
}

/// Most handshake records a ClientHello may be split into. Real clients send one record (a
/// ClientHello is at most a few KiB and a record holds 16 KiB); 64 leaves room for odd
/// fragmenting middleboxes while refusing a client that sends one-byte records to make the relay
/// work per byte.
pub const MAX_RECORDS: usize = 64;

/// Parses the ClientHello at the start of `buf` (the raw bytes read from the socket).
///
/// Each call starts over; a caller that reads in pieces should keep a [`Reassembler`] instead,
/// which looks at every byte once.
///
/// # Errors
/// See [`ClientHelloError`].
pub fn parse(buf: &[u8]) -> Result<Peeked, ClientHelloError> {
    Reassembler::default().push(buf)
}

/// Incremental ClientHello reassembly over a growing buffer.
///
/// The caller appends what it reads to one buffer and passes the whole buffer to [`push`]
/// each time; the reassembler remembers how many bytes it has consumed as complete records and
/// the handshake message assembled so far, so a client dripping its hello one byte at a time
/// costs linear work, not a re-parse of everything per read (quadratic).
///
/// [`push`]: Reassembler::push
#[derive(Debug, Default)]
pub struct Reassembler {
    /// Bytes of the buffer already consumed as complete records.
    consumed: usize,
    /// Complete records seen.
    records: usize,
    /// The handshake message reassembled from their payloads.
    message: Vec<u8>,
}

impl Reassembler {
    /// Looks at the bytes of `buf` not yet consumed. `buf` must start with the bytes passed
    /// before (the caller only appends).
    ///
    /// # Errors
    /// See [`ClientHelloError`].
    pub fn push(&mut self, buf: &[u8]) -> Result<Peeked, ClientHelloError> {
        loop {
            let rest = buf.get(self.consumed..).unwrap_or_default();
            if rest.is_empty() {
                return Ok(Peeked::Incomplete);
            }
            if rest[0] != CONTENT_HANDSHAKE {
                return Err(ClientHelloError::NotTls);
            }
            if rest.len() < 5 {
                return Ok(Peeked::Incomplete);
            }
            if rest[1] != 3 {
                return Err(ClientHelloError::NotTls);
            }
            let len = u16::from_be_bytes([rest[3], rest[4]]) as usize;
            if len == 0 || len > MAX_CLIENT_HELLO_LEN {
                return Err(ClientHelloError::Malformed("bad record length"));
            }
            if rest.len() < 5 + len {
                return Ok(Peeked::Incomplete);
            }
            if self.message.len() + len > MAX_CLIENT_HELLO_LEN + 4 {
                return Err(ClientHelloError::TooLarge);
            }
            self.records += 1;
            if self.records > MAX_RECORDS {
                return Err(ClientHelloError::TooManyRecords);
            }
            self.message.extend_from_slice(&rest[5..5 + len]);
            self.consumed += 5 + len;
            let message = &self.message;
            if message.len() >= 4 {
                if message[0] != HANDSHAKE_CLIENT_HELLO {
                    return Err(ClientHelloError::NotClientHello);
                }
                let body_len = u32::from_be_bytes([0, message[1], message[2], message[3]]) as usize;
                if body_len > MAX_CLIENT_HELLO_LEN {
                    return Err(ClientHelloError::TooLarge);
                }
                if message.len() >= 4 + body_len {
                    return parse_body(&message[4..4 + body_len]).map(Peeked::Complete);
                }
            }
        }
    }
}

/// A bounds-checked reader over a byte slice.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], ClientHelloError> {
        if self.0.len() < n {
            return Err(ClientHelloError::Malformed(what));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn u8(&mut self, what: &'static str) -> Result<usize, ClientHelloError> {
        Ok(self.take(1, what)?[0] as usize)
    }

    fn u16(&mut self, what: &'static str) -> Result<usize, ClientHelloError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]) as usize)
    }

    fn vec8(&mut self, what: &'static str) -> Result<&'a [u8], ClientHelloError> {
        let n = self.u8(what)?;
        self.take(n, what)
    }

    fn vec16(&mut self, what: &'static str) -> Result<&'a [u8], ClientHelloError> {
        let n = self.u16(what)?;
        self.take(n, what)
    }
}

fn parse_body(body: &[u8]) -> Result<ClientHelloInfo, ClientHelloError> {
    let mut r = Reader(body);
    r.take(2 + 32, "version and random")?;
    r.vec8("session id")?;
    r.vec16("cipher suites")?;
    r.vec8("compression methods")?;
    let mut info = ClientHelloInfo::default();
    if r.0.is_empty() {
        return Ok(info); // no extensions at all
    }
    let mut exts = Reader(r.vec16("extensions")?);
    while !exts.0.is_empty() {
        let kind = exts.u16("extension type")? as u16;
        let mut data = Reader(exts.vec16("extension data")?);
        match kind {
            EXT_SERVER_NAME => {
                let mut list = Reader(data.vec16("server name list")?);
                while !list.0.is_empty() {
                    let name_type = list.u8("server name type")?;
                    let name = list.vec16("server name")?;
                    if name_type == 0 {
                        let name = std::str::from_utf8(name)
                            .map_err(|_| ClientHelloError::Malformed("server name is not UTF-8"))?;
                        if !name.is_ascii() || name.is_empty() {
                            return Err(ClientHelloError::Malformed(
                                "server name is not an ASCII host name",
                            ));
                        }
                        info.server_name = Some(name.to_owned());
                    }
                }
            }
            EXT_ALPN => {
                let mut list = Reader(data.vec16("ALPN list")?);
                while !list.0.is_empty() {
                    info.alpn.push(list.vec8("ALPN protocol")?.to_vec());
                }
            }
            _ => {}
        }
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    /// A minimal well-formed ClientHello record with the given SNI and ALPN.
    pub(crate) fn client_hello(sni: &str, alpn: &[&[u8]]) -> Vec<u8> {
        let mut exts = Vec::new();
        let mut sni_ext = Vec::new();
        sni_ext.extend_from_slice(&((sni.len() + 3) as u16).to_be_bytes());
        sni_ext.push(0);
        sni_ext.extend_from_slice(&(sni.len() as u16).to_be_bytes());
        sni_ext.extend_from_slice(sni.as_bytes());
        exts.extend_from_slice(&0u16.to_be_bytes());
        exts.extend_from_slice(&(sni_ext.len() as u16).to_be_bytes());
        exts.extend_from_slice(&sni_ext);
        let mut alpn_list = Vec::new();
        for p in alpn {
            alpn_list.push(p.len() as u8);
            alpn_list.extend_from_slice(p);
        }
        exts.extend_from_slice(&16u16.to_be_bytes());
        exts.extend_from_slice(&((alpn_list.len() + 2) as u16).to_be_bytes());
        exts.extend_from_slice(&(alpn_list.len() as u16).to_be_bytes());
        exts.extend_from_slice(&alpn_list);
        let mut body = vec![3, 3];
        body.extend_from_slice(&[7; 32]);
        body.push(0); // session id
        body.extend_from_slice(&[0, 2, 0x13, 0x01]); // one cipher suite
        body.extend_from_slice(&[1, 0]); // null compression
        body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
        body.extend_from_slice(&exts);
        let mut msg = vec![HANDSHAKE_CLIENT_HELLO];
        msg.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        msg.extend_from_slice(&body);
        let mut rec = vec![CONTENT_HANDSHAKE, 3, 1];
        rec.extend_from_slice(&(msg.len() as u16).to_be_bytes());
        rec.extend_from_slice(&msg);
        rec
    }

    #[test]
    fn reads_sni_and_alpn() {
        let wire = client_hello("pump.ns.relay.local", &[b"tether/1", b"h2"]);
        for cut in 0..wire.len() {
            assert_eq!(parse(&wire[..cut]).unwrap(), Peeked::Incomplete, "cut at {cut}");
        }
        let Peeked::Complete(info) = parse(&wire).unwrap() else {
            panic!()
        };
        assert_eq!(info.server_name.as_deref(), Some("pump.ns.relay.local"));
        assert_eq!(info.alpn, vec![b"tether/1".to_vec(), b"h2".to_vec()]);
    }

    #[test]
    fn reassembles_split_records() {
        let wire = client_hello("pump.ns.relay.local", &[b"http/1.1"]);
        let msg = &wire[5..];
        let (a, b) = msg.split_at(20);
        let mut split = vec![CONTENT_HANDSHAKE, 3, 1];
        split.extend_from_slice(&(a.len() as u16).to_be_bytes());
        split.extend_from_slice(a);
        split.extend_from_slice(&[CONTENT_HANDSHAKE, 3, 3]);
        split.extend_from_slice(&(b.len() as u16).to_be_bytes());
        split.extend_from_slice(b);
        let Peeked::Complete(info) = parse(&split).unwrap() else {
            panic!()
        };
        assert_eq!(info.server_name.as_deref(), Some("pump.ns.relay.local"));
    }

    /// Splits `wire`'s handshake message into records of `size` payload bytes.
    fn fragment(wire: &[u8], size: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for chunk in wire[5..].chunks(size) {
            out.extend_from_slice(&[CONTENT_HANDSHAKE, 3, 1]);
            out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
            out.extend_from_slice(chunk);
        }
        out
    }

    #[test]
    fn one_byte_records_are_refused() {
        // Each tiny record used to cost a re-parse of everything before it: refused instead.
        let wire = client_hello("pump.ns.relay.local", &[b"tether/1"]);
        assert_eq!(parse(&fragment(&wire, 1)), Err(ClientHelloError::TooManyRecords));
        // A handful of records is still fine.
        let few = fragment(&wire, wire.len().div_ceil(MAX_RECORDS));
        assert!(matches!(parse(&few), Ok(Peeked::Complete(_))));
    }

    #[test]
    fn the_reassembler_consumes_each_record_once() {
        let wire = fragment(&client_hello("pump.ns.relay.local", &[b"tether/1"]), 16);
        let mut r = Reassembler::default();
        for cut in 1..wire.len() {
            assert_eq!(r.push(&wire[..cut]).unwrap(), Peeked::Incomplete, "cut at {cut}");
        }
        let Peeked::Complete(info) = r.push(&wire).unwrap() else {
            panic!("incomplete")
        };
        assert_eq!(info.server_name.as_deref(), Some("pump.ns.relay.local"));
        assert!(r.records <= MAX_RECORDS && r.consumed == wire.len());
    }

    #[test]
    fn rejects_non_tls() {
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Err(ClientHelloError::NotTls));
        assert_eq!(
            parse(&[22, 3, 1, 0, 0]),
            Err(ClientHelloError::Malformed("bad record length"))
        );
        assert_eq!(
            parse(&[22, 3, 1, 0, 4, 2, 0, 0, 0]),
            Err(ClientHelloError::NotClientHello)
        );
        assert_eq!(
            parse(&[22, 3, 1, 0, 4, 1, 0xff, 0xff, 0xff]),
            Err(ClientHelloError::TooLarge)
        );
    }

    #[test]
    fn random_mutations_never_panic() {
        let mut rng = StdRng::seed_from_u64(5);
        let seed = client_hello("pump.ns.relay.local", &[b"tether/1"]);
        for _ in 0..50_000 {
            let mut buf = seed.clone();
            for _ in 0..rng.gen_range(1..4) {
                let i = rng.gen_range(0..buf.len());
                buf[i] = rng.r#gen();
            }
            let _ = parse(&buf);
        }
    }
}
