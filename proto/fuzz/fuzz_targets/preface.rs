//! Fuzzes the device preface and preface-reply decoders.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut buf = bytes::BytesMut::from(data);
    let _ = tether_proto::preface::Preface::decode(&mut buf);
    let mut buf = bytes::BytesMut::from(data);
    let _ = tether_proto::preface::PrefaceReply::decode(&mut buf);
});
