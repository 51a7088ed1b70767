//! The PostgreSQL codec on any bytes, from either side: the startup packet,
//! then typed messages decoded as the session decodes them. Never panics, never
//! allocates past the frame maximum, and every frame re-encodes to its bytes.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use portcullis_fuzz::protocol::postgres::codec;

/// The agent's default maximum frame size is larger; a small one here lets the
/// fuzzer reach the limit.
const MAX: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    let mut startup = BytesMut::from(data);
    let _ = codec::try_startup(&mut startup);

    let mut buf = BytesMut::from(data);
    while let Ok(Some(f)) = codec::try_frame(&mut buf, MAX) {
        assert!(f.body.len() + 4 <= MAX, "frame of {} bytes", f.body.len());
        let mut wire = BytesMut::new();
        f.encode(&mut wire);
        let again = codec::try_frame(&mut wire, MAX);
        assert_eq!(again, Ok(Some(f.clone())), "re-encoded frame differs");
        assert!(wire.is_empty());
        // Frontend decoding, and the backend helpers the session uses.
        let _ = codec::front(&f);
        let _ = codec::parse_notice(&f.body);
        let _ = codec::command_tag(&f.body);
        let _ = codec::row_description(&f.body);
        let _ = codec::data_row(&f.body);
        if let Ok((_, rest)) = codec::auth_request(&f.body) {
            let _ = codec::sasl_mechanisms(rest);
        }
    }
});
