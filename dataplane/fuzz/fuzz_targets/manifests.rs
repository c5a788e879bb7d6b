//! The manifest reader and compile: any text in a config file is reported, never a panic,
//! and compile (a pure function) gives the same output twice.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portico_compile::manifests::ManifestSet;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut set = ManifestSet::default();
    set.add_file("fuzz.yaml", text);
    if set.errors.is_empty() {
        let a = portico_compile::compile(&set.inputs, portico_compile::CONTROLLER_NAME);
        let b = portico_compile::compile(&set.inputs, portico_compile::CONTROLLER_NAME);
        assert_eq!(a.snapshots, b.snapshots);
    }
});
