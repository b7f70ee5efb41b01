//! Fuzz the bundle parser and verifier: framing, signature check, header/body JSON and
//! `inspect` must reject arbitrary bytes with an error, never panic or over-allocate.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = facegate::bundle::fuzz_verify(data);
    let _ = facegate::bundle::parse_frame(data);
});
