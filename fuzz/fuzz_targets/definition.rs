//! The workflow-definition parser and validator on any text: diagnostics, never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = shenguan::definition::parse("fuzz.toml", text);
    }
});
