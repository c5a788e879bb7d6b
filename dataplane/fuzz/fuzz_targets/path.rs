//! The path normaliser: never panics, and what it returns needs no more normalising (the
//! path the router matches is the path the backend gets, whichever reads it again).
#![no_main]

use libfuzzer_sys::fuzz_target;
use portico_dataplane::path::normalize;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(n) = normalize(s) else {
        return;
    };
    assert!(n.forward.starts_with('/'), "{s:?} → {:?}", n.forward);
    // Idempotent: normalising the result changes nothing.
    let again = normalize(&n.forward).expect("a normalised path normalises");
    assert_eq!(again.forward, n.forward, "{s:?}");
    assert_eq!(again.matching, n.matching, "{s:?}");
    // The matched path has no dot or empty segment a backend could resolve differently.
    let segs: Vec<&str> = n.matching.split('/').skip(1).collect();
    for (i, seg) in segs.iter().enumerate() {
        assert!(*seg != "." && *seg != "..", "{s:?} → {:?}", n.matching);
        assert!(
            !seg.is_empty() || i + 1 == segs.len(),
            "{s:?} → {:?}",
            n.matching
        );
    }
});
