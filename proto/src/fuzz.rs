//! The bodies of the cargo-fuzz targets (`proto/fuzz/`), shared with the corpus replay test
//! (`proto/tests/fuzz_corpus.rs`) so `cargo test` runs every committed seed through exactly what
//! the fuzzer runs. Each function must never panic, whatever `data` is; the assertions inside
//! are properties the fuzzer checks.

use bytes::BytesMut;

use crate::{
    client_hello::{self, Peeked, Reassembler},
    head, preface, proxy_header,
    token::TokenVerifier,
};

/// The ClientHello peek, one-shot and incremental: the rest of `data` fed in chunks whose size
/// the first byte picks must reach the same verdict in the [`Reassembler`] as
/// [`client_hello::parse`] on all of it.
pub fn client_hello(data: &[u8]) {
    let Some((&chunk, rest)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk).max(1);
    let mut incremental = Reassembler::default();
    let mut verdict = Ok(Peeked::Incomplete);
    for end in (chunk..rest.len()).step_by(chunk).chain([rest.len()]) {
        verdict = incremental.push(&rest[..end]);
        if !matches!(verdict, Ok(Peeked::Incomplete)) {
            break;
        }
    }
    let whole_rest = client_hello::parse(rest);
    assert_eq!(verdict, whole_rest, "incremental and one-shot parses disagree");
}

/// The CONNECT request head and the relay's response head.
pub fn connect_head(data: &[u8]) {
    let _ = head::parse_connect(data);
    let _ = head::parse_response(data);
}

/// The device preface and the relay's reply; a decoded preface's `agentVersion` is always
/// safe to log.
pub fn preface(data: &[u8]) {
    let mut buf = BytesMut::from(data);
    if let Ok(preface::Decoded::Complete(p)) = preface::Preface::decode(&mut buf) {
        assert!(preface::validate_agent_version(&p.agent_version).is_ok());
    }
    let mut buf = BytesMut::from(data);
    let _ = preface::PrefaceReply::decode(&mut buf);
}

/// Stream-token verification under `verifier` (random bytes must never verify).
pub fn token(verifier: &TokenVerifier, data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        assert!(
            verifier.verify(text, "tether.local", 1_800_000_000, 30).is_err(),
            "an unsigned input verified"
        );
    }
}

/// The PROXY v2 header a peer port reads first: the length check on the fixed part, then the
/// decoder on exactly the announced bytes (as the peer port reads them). A decoded header
/// re-encodes to one that decodes to the same addresses.
pub fn proxy_header(data: &[u8]) {
    let _ = proxy_header::decode(data);
    let Some(fixed) = data.get(..proxy_header::FIXED_LEN) else {
        return;
    };
    let fixed: &[u8; proxy_header::FIXED_LEN] = fixed.try_into().expect("length checked");
    let Ok(total) = proxy_header::announced_len(fixed) else {
        return;
    };
    assert!(total <= proxy_header::MAX_HEADER_LEN);
    let Some(header) = data.get(..total) else {
        return;
    };
    if let Ok(h) = proxy_header::decode(header) {
        let again = proxy_header::decode(&proxy_header::encode(h.source, h.destination));
        assert_eq!(again, Ok(h), "a decoded header does not survive re-encoding");
    }
}
