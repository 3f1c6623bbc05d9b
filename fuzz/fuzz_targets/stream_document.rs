//! Whatever a room stream holds (even entries some other writer put there),
//! assembling the document never panics.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use y_redis::document::assemble;
use y_redis::redis::{StreamEntry, StreamId};

fuzz_target!(|data: &[u8]| {
    let entries: Vec<StreamEntry> = data
        .split(|&b| b == 0xfe)
        .enumerate()
        .map(|(i, chunk)| StreamEntry {
            id: StreamId { ms: i as u64 + 1, seq: 0 },
            message: Bytes::copy_from_slice(chunk),
        })
        .collect();
    let _ = assemble(None, &entries);
});
