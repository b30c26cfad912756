//! Bearer-token verification on any text: UNAUTHENTICATED with a reason, never a panic.
#![no_main]

use std::sync::OnceLock;

use shenguan::auth::verify::{self, Verifier};

fn verifier() -> &'static Verifier {
    static V: OnceLock<Verifier> = OnceLock::new();
    V.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("shenguan-fuzz-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let key = verify::DevKey::load_or_create(&dir.join("dev-key")).expect("a dev key");
        Verifier::new(verify::Config::dev(key))
        .expect("a verifier")
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = verifier().verify(text);
    }
});
