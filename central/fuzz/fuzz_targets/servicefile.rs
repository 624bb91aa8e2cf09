//! Any bytes as a service file: a value or located errors, never a panic, a hang or an
//! unbounded allocation.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Err(err) = ferry_api::servicefile::parse("service.yml", &text) {
        assert!(err.errors().count() > 0);
        for d in &err.diagnostics {
            assert!(d.line >= 1 && d.column >= 1);
        }
    }
});
