//! `deploy/REFERENCE.md` stays true: every example parses with the server's own parsers and
//! means what the text says, every credential type it lists is one the code knows, and every
//! setting of the sample configuration has a row in its configuration table.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use gatehouse_engine::server::SAMPLE_CONFIG;
use gatehouse_engine::{Role, ScannerRegistry, TrustList};
use gatehouse_protocol::{CredentialType, RevocationKind, RevocationList};

fn reference() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/REFERENCE.md"))
        .unwrap()
}

/// The fenced block after `<!-- example: NAME -->`.
fn example(doc: &str, name: &str) -> String {
    let marker = format!("<!-- example: {name} -->");
    let after = doc
        .split_once(&marker)
        .unwrap_or_else(|| panic!("no example {name}"))
        .1;
    let body = after.split_once("```").unwrap().1;
    let body = body.split_once('\n').unwrap().1;
    body.split_once("```").unwrap().0.to_string()
}

fn hex_bytes(text: &str) -> Vec<u8> {
    hex::decode(text.split_whitespace().collect::<String>()).unwrap()
}

#[test]
fn the_examples_parse_and_mean_what_the_text_says() {
    let doc = reference();
    let trust = TrustList::parse(Path::new("trust.toml"), &example(&doc, "trust")).unwrap();
    assert_eq!(trust.len(), 2);

    let reg =
        ScannerRegistry::parse(Path::new("scanners.toml"), &example(&doc, "scanners")).unwrap();
    assert_eq!(reg.len(), 6);
    let desk = reg.get("rental-desk-1").unwrap();
    assert_eq!(desk.mdoc.doc_types, ["org.iso.18013.5.1.mDL"]);
    assert_eq!(desk.mdoc.authorities, ["US", "KR"]);
    assert!(!desk.mdoc.device_mac);
    let revoked = gatehouse_engine::MdocRevocations::parse(
        Path::new("mdoc-revocations.txt"),
        &example(&doc, "mdoc-revocations"),
    )
    .unwrap();
    assert_eq!(revoked.len(), 1);
    match &reg.get("closed-gate-2").unwrap().role {
        Role::Gate { admits, .. } => assert!(admits.is_empty()),
        other => panic!("{other:?}"),
    }
    match &reg.get("welfare-gate-1").unwrap().role {
        Role::Gate { admits, .. } => assert!(admits.contains(&CredentialType::FamilyMember)),
        other => panic!("{other:?}"),
    }
    assert_eq!(reg.get("age-1").unwrap().role, Role::AgeCheck);

    let id: [u8; 16] = hex::decode("00112233445566778899aabbccddeeff")
        .unwrap()
        .try_into()
        .unwrap();
    let snapshot =
        RevocationList::decode(&hex_bytes(&example(&doc, "revocation-snapshot"))).unwrap();
    assert_eq!((snapshot.epoch, snapshot.base), (1, None));
    assert_eq!(snapshot.revoke[0].kind, RevocationKind::Credential);
    assert_eq!(snapshot.revoke[0].id, id);
    let delta = RevocationList::decode(&hex_bytes(&example(&doc, "revocation-delta"))).unwrap();
    assert_eq!((delta.epoch, delta.base), (2, Some(1)));
    assert!(delta.revoke.is_empty());
    assert_eq!(delta.reinstate, snapshot.revoke);
    // And the bytes are exactly what the encoder writes.
    assert_eq!(
        snapshot.encode(),
        hex_bytes(&example(&doc, "revocation-snapshot"))
    );
    assert_eq!(
        delta.encode(),
        hex_bytes(&example(&doc, "revocation-delta"))
    );
}

#[test]
fn every_credential_type_and_every_sample_setting_is_documented() {
    let doc = reference();
    for t in CredentialType::ALL {
        assert!(
            doc.contains(&format!("`{}`", t.label())),
            "{} missing",
            t.label()
        );
    }
    let mut section = String::new();
    for line in SAMPLE_CONFIG.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            section = line.trim_matches(|c| c == '[' || c == ']').to_string();
        } else if let Some((key, _)) = line.split_once('=') {
            if line.starts_with('#') {
                continue;
            }
            let key = key.trim();
            let name = if section.is_empty() {
                key.to_string()
            } else {
                format!("{section}.{key}")
            };
            assert!(
                doc.contains(&format!("| `{name}` |")),
                "deploy/REFERENCE.md has no row for `{name}`"
            );
        }
    }
}
