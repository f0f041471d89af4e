//! The batch equation against the strict single check on arbitrary signatures: for up to 8
//! signatures under three fixed keys, each with its message, `r ‖ s` and parity taken from the
//! input, `verify_batch` verifies exactly when every one passes `verify_strict`, and never
//! panics. (Random bytes rarely make a valid signature; the first signature of each input is a
//! real one, mutated by the input's first bytes where they are non-zero.)
#![no_main]

use std::sync::OnceLock;

use gatehouse_batch::{verify_batch, Entry};
use gatehouse_protocol::{verify_strict, PrivateKey, PublicKey, Signature};

fn keys() -> &'static [PrivateKey] {
    static KEYS: OnceLock<Vec<PrivateKey>> = OnceLock::new();
    KEYS.get_or_init(|| {
        (1u8..=3)
            .map(|i| PrivateKey::from_bytes(&[i; 32]).expect("a test key"))
            .collect()
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let keys = keys();
    let mut signed: Vec<(PublicKey, Vec<u8>, Signature)> = Vec::new();
    // A real signature, then the input's own: [key, parity, len, msg…, r‖s (64)] each.
    let msg = b"a real signature".to_vec();
    let mut real = keys[0].sign(&msg).expect("sign");
    for (i, b) in data.iter().take(64).enumerate() {
        real.rs[i] ^= b;
    }
    signed.push((keys[0].public().clone(), msg, real));
    let mut rest = data.get(64..).unwrap_or(&[]);
    while signed.len() < 8 && rest.len() >= 3 {
        let key = keys[usize::from(rest[0]) % keys.len()].public().clone();
        let y_odd = rest[1] & 1 == 1;
        let len = usize::from(rest[2]) % 32;
        rest = &rest[3..];
        if rest.len() < len + 64 {
            break;
        }
        let msg = rest[..len].to_vec();
        let mut rs = [0u8; 64];
        rs.copy_from_slice(&rest[len..len + 64]);
        rest = &rest[len + 64..];
        signed.push((key, msg, Signature { rs, y_odd }));
    }
    let entries: Vec<Entry<'_>> = signed
        .iter()
        .map(|(key, msg, sig)| Entry { key, msg, sig })
        .collect();
    let singles = signed
        .iter()
        .all(|(key, msg, sig)| verify_strict(key, msg, sig).is_ok());
    assert_eq!(verify_batch(&entries).is_ok(), singles);
});
