//! JWT header parsing and JWKS parsing: never panic on any input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portico_dataplane::auth::jwt::{self, Alg, Rules};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let rules = Rules {
        algorithms: vec![Alg::Rs256, Alg::Es256, Alg::Hs256, Alg::EdDsa],
        issuer: "https://idp.test".into(),
        audiences: vec!["api".into()],
        leeway: 30,
    };
    let _ = jwt::parse(s, &rules);
    let _ = jwt::KeySet::from_jwks(data);
});
