//! The snapshot channel's frame decoder: arbitrary bytes, in arbitrary pieces, never panic
//! and never hold more than one frame's limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portico_model::channel::FrameDecoder;

fuzz_target!(|data: &[u8]| {
    let mut d = FrameDecoder::default();
    let split = data.first().map_or(1, |b| usize::from(*b).max(1));
    for chunk in data.chunks(split) {
        d.push(chunk);
        while let Ok(Some(_)) = d.next_snapshot() {}
    }
});
