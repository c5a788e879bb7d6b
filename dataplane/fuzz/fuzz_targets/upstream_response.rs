//! A backend's HTTP/1.1 response, in arbitrary pieces, read by the gateway's own codec: never
//! a panic, and a body that is read whole is exactly as long as its head said.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portico_dataplane::upstream::read_response;

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let head_request = first & 0x80 != 0;
    let split = usize::from(first & 0x7f).max(1);
    let pieces: Vec<&[u8]> = rest.chunks(split).collect();
    if let Ok((status, headers, body, _)) = read_response(&pieces, head_request) {
        if head_request || status == 204 || status == 304 {
            assert!(body.is_empty());
        } else if let Some(len) = headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .and_then(|v| v.trim().parse::<usize>().ok())
            && headers.get(http::header::TRANSFER_ENCODING).is_none()
        {
            assert_eq!(body.len(), len);
        }
    }
});
