//! Request sanitising before routing: never panics, and an accepted request has exactly one
//! Host, no hop-by-hop header, and (by default) no underscore in a header name.
#![no_main]

use http::{Request, Version};
use libfuzzer_sys::fuzz_target;
use portico_dataplane::sanitize::{EdgeSettings, inbound};

fuzz_target!(|data: &[u8]| {
    // The input: a target line, then header lines `name: value`, then the rest is ignored.
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let target = lines.next().unwrap_or("/");
    let version = if data.first().is_some_and(|b| b & 1 == 1) {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    let mut b = Request::builder().uri(target).version(version);
    for l in lines.take(32) {
        if let Some((k, v)) = l.split_once(':') {
            b = b.header(k.trim(), v.trim());
        }
    }
    let Ok(mut req) = b.body(()) else {
        return;
    };
    if inbound(&mut req, &EdgeSettings::default()).is_ok() {
        let h = req.headers();
        assert_eq!(h.get_all(http::header::HOST).iter().count(), 1);
        assert!(!h.contains_key(http::header::CONNECTION));
        assert!(!h.keys().any(|k| k.as_str().contains('_')));
    }
});
