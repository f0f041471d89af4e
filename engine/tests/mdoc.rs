//! mdoc presentations in the engine (SPEC §12): the checks in their order, one-time use of a
//! session, the fence, revocations, and what each role learns. Documents are the independent
//! implementation's (`mdoc/tests/data/interop`, made by `@owf/mdoc`), verified at a time inside
//! their validity.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use gatehouse_engine::mdoc::{Iaca, TrustAnchors, MDL_DOCTYPE};
use gatehouse_engine::*;
use gatehouse_protocol::{Predicate, Reason, Verdict};

/// 2027-06-01T00:00:00Z, inside every validity of the fixtures.
const NOW: u64 = 1_811_808_000;

fn file(name: &str) -> Vec<u8> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../mdoc/tests/data/interop/");
    std::fs::read(format!("{dir}{name}")).unwrap()
}

fn reader_key() -> [u8; 32] {
    hex::decode(
        String::from_utf8(file("reader_ephemeral_private.hex"))
            .unwrap()
            .trim(),
    )
    .unwrap()
    .try_into()
    .unwrap()
}

fn scanner(id: &str, role: Role, mdoc: MdocPolicy) -> Scanner {
    Scanner {
        id: id.into(),
        role,
        mdoc,
    }
}

fn engine_with(config: EngineConfig) -> Engine {
    let gate = Role::Gate {
        unit: "1".parse().unwrap(),
        admits: DEFAULT_GATE_ADMITS.to_vec(),
    };
    let mdl = MdocPolicy {
        doc_types: vec![MDL_DOCTYPE.into()],
        ..MdocPolicy::default()
    };
    let mut r = ScannerRegistry::new();
    r.insert(scanner("gate-plain", gate.clone(), MdocPolicy::default()));
    r.insert(scanner("gate-mdl", gate.clone(), mdl.clone()));
    r.insert(scanner(
        "gate-mdl-ca",
        gate,
        MdocPolicy {
            authorities: vec!["US-CA".into()],
            ..mdl
        },
    ));
    r.insert(scanner("partner", Role::Partner, MdocPolicy::default()));
    r.insert(scanner("age", Role::AgeCheck, MdocPolicy::default()));
    r.insert(scanner(
        "age-mac",
        Role::AgeCheck,
        MdocPolicy {
            device_mac: true,
            ..MdocPolicy::default()
        },
    ));
    let engine = Engine::new(config, TrustList::new(), r).unwrap();
    engine.set_mdoc_trust(TrustAnchors::new(vec![
        Iaca::from_der(&file("iaca.der")).unwrap()
    ]));
    engine
}

fn engine() -> Engine {
    engine_with(EngineConfig::default())
}

fn sig_item(session_start: u64) -> MdocItem {
    MdocItem {
        device_response: file("device_response_sig.cbor"),
        transcript: file("transcript_sig.cbor"),
        session_start,
        reader_key: None,
    }
}

fn mac_item() -> MdocItem {
    MdocItem {
        device_response: file("device_response_mac.cbor"),
        transcript: file("transcript_mac.cbor"),
        session_start: NOW,
        reader_key: Some(reader_key()),
    }
}

fn verdict(engine: &Engine, scanner: &str, item: MdocItem, now: u64) -> Verdict {
    let s = engine.scanner(scanner).unwrap();
    engine
        .verify_batch(&[Item::mdoc(s, item)], now)
        .pop()
        .unwrap()
}

#[test]
fn each_role_learns_what_spec_12_4_says() {
    // Age counter: ISO's age_over_19 (true in the document), predicate 3 and nothing else.
    let v = verdict(&engine(), "age", sig_item(NOW), NOW);
    assert_eq!(v.reason, Reason::Accepted);
    assert_eq!(v.attributes.predicate, Some(Predicate::IsoAgeOver19));
    assert_eq!(v.attributes.credential_type, None);
    assert_eq!(v.attributes.valid_until, None);
    // A gate that lists the mDL: when the document's validity ends, nothing else.
    let v = verdict(&engine(), "gate-mdl", sig_item(NOW), NOW);
    assert_eq!(v.reason, Reason::Accepted);
    // validUntil 2029-12-31T00:00:00Z.
    assert_eq!(v.attributes.valid_until, Some(1_893_369_600));
    assert_eq!(v.attributes.predicate, None);
    assert_eq!(v.attributes.unit, None);
    // A gate that lists no docType, or another authority: not admitted.
    assert_eq!(
        verdict(&engine(), "gate-plain", sig_item(NOW), NOW).reason,
        Reason::NotAdmitted
    );
    assert_eq!(
        verdict(&engine(), "gate-mdl-ca", sig_item(NOW), NOW).reason,
        Reason::NotAdmitted
    );
    // A partner: an mdoc does not attest the military discount.
    let v = verdict(&engine(), "partner", sig_item(NOW), NOW);
    assert_eq!(v.reason, Reason::NotEligible);
    assert!(v.attributes.is_empty());
}

#[test]
fn a_session_is_used_once_and_a_retry_of_the_same_scan_gets_its_first_answer() {
    let e = engine();
    let age = e.scanner("age").unwrap();
    let key = [7u8; 16];
    let with_retry = |key| Item {
        retry: Some(key),
        ..Item::mdoc(Arc::clone(&age), sig_item(NOW))
    };
    let first = e.verify_batch(&[with_retry(key)], NOW).pop().unwrap();
    assert_eq!(first.reason, Reason::Accepted);
    let again = e.verify_batch(&[with_retry(key)], NOW + 1).pop().unwrap();
    assert_eq!(again.reason, Reason::Accepted);
    assert!(again.repeat);
    let other = e
        .verify_batch(&[with_retry([8; 16])], NOW + 1)
        .pop()
        .unwrap();
    assert_eq!(other.reason, Reason::Replayed);
    // Another scanner, no key: replayed; the gate's policy is not consulted first.
    assert_eq!(
        verdict(&e, "gate-mdl", sig_item(NOW), NOW + 2).reason,
        Reason::Replayed
    );
}

#[test]
fn the_stated_session_start_is_held_to_the_window_the_skew_and_the_fence() {
    let window = EngineConfig::default().params.window_secs;
    let skew = EngineConfig::default().clock_skew_secs;
    assert_eq!(
        verdict(&engine(), "age", sig_item(NOW - window), NOW).reason,
        Reason::Stale
    );
    assert_eq!(
        verdict(&engine(), "age", sig_item(NOW - window + 1), NOW).reason,
        Reason::Accepted
    );
    assert_eq!(
        verdict(&engine(), "age", sig_item(NOW + skew + 1), NOW).reason,
        Reason::FromFuture
    );
    // A node restarted on a memory table at NOW: a session begun before its fence.
    let restarted = engine_with(EngineConfig {
        accept_from: restart_fence(NOW, skew),
        ..EngineConfig::default()
    });
    assert_eq!(
        verdict(&restarted, "age", sig_item(NOW + skew), NOW + 1).reason,
        Reason::NodeRestarted
    );
    assert_eq!(
        verdict(&restarted, "age", sig_item(NOW + skew + 1), NOW + 2).reason,
        Reason::Accepted
    );
}

/// A session start stated in the past must not shorten the record: the same transcript shown
/// again a moment later with a fresh start is `replayed`. (With the record's life counted from
/// the stated start, it was gone after a second and the second showing was accepted.)
#[test]
fn a_start_stated_in_the_past_does_not_shorten_one_time_use() {
    let window = EngineConfig::default().params.window_secs;
    let e = engine();
    assert_eq!(
        verdict(&e, "age", sig_item(NOW - window + 1), NOW).reason,
        Reason::Accepted
    );
    e.purge(NOW + 2);
    assert_eq!(
        verdict(&e, "age", sig_item(NOW + 2), NOW + 2).reason,
        Reason::Replayed
    );
}

/// The cache serves facts only under the IACA list they were proved under: facts a check
/// proved under an old list, inserted after a reload, are not used under the new one.
#[test]
fn cached_issuer_facts_serve_only_the_trust_list_they_were_proved_under() {
    use gatehouse_engine::core::MdocCache;
    use gatehouse_engine::mdoc::{decode_device_response, verify_issuer};
    let old = Arc::new(TrustAnchors::new(vec![
        Iaca::from_der(&file("iaca.der")).unwrap()
    ]));
    let new = Arc::new(TrustAnchors::default());
    let bytes = file("device_response_sig.cbor");
    let doc = decode_device_response(&bytes).unwrap().document;
    let facts = Arc::new(verify_issuer(&doc, &old, NOW as i64).unwrap());
    let cache = MdocCache::new(16);
    cache.insert([1; 32], &old, facts);
    assert!(cache.get(&[1; 32], &old).is_some());
    assert!(cache.get(&[1; 32], &new).is_none());
}

#[test]
fn a_device_mac_is_accepted_only_where_the_scanner_allows_it() {
    assert_eq!(
        verdict(&engine(), "age", mac_item(), NOW).reason,
        Reason::DeviceMacNotAllowed
    );
    assert_eq!(
        verdict(&engine(), "age-mac", mac_item(), NOW).reason,
        Reason::Accepted
    );
    // Without the reader's key the MAC cannot be checked: the request is incomplete.
    let no_key = MdocItem {
        reader_key: None,
        ..mac_item()
    };
    assert_eq!(
        verdict(&engine(), "age-mac", no_key, NOW).reason,
        Reason::Malformed
    );
}

#[test]
fn revoked_signers_and_documents_are_denied_and_the_cache_serves_the_issuer_signature() {
    let e = engine();
    assert_eq!(
        verdict(&e, "age", sig_item(NOW), NOW).reason,
        Reason::Accepted
    );
    assert_eq!(e.mdoc_cache_stats(), ((0, 1), 1));
    // The same document in another session: the cache vouches for the issuer's part.
    assert_eq!(
        verdict(&e, "age-mac", mac_item(), NOW).reason,
        Reason::Accepted
    );
    assert_eq!(e.mdoc_cache_stats(), ((1, 1), 1));

    let ds = gatehouse_engine::mdoc::signer_fingerprint(&file("ds.der")).unwrap();
    let text = format!("# revoked\nsigner {}\n", hex::encode(ds));
    let list = MdocRevocations::parse(std::path::Path::new("<test>"), &text).unwrap();
    let e = engine();
    e.set_mdoc_revocations(list);
    assert_eq!(
        verdict(&e, "age", sig_item(NOW), NOW).reason,
        Reason::Revoked
    );
    assert!(MdocRevocations::parse(std::path::Path::new("<t>"), "signer abc").is_err());
    assert!(MdocRevocations::parse(std::path::Path::new("<t>"), "subject 00").is_err());
}

#[test]
fn without_an_iaca_or_after_a_trust_change_the_issuer_is_unknown() {
    let e = engine();
    assert_eq!(
        verdict(&e, "age", sig_item(NOW), NOW).reason,
        Reason::Accepted
    );
    e.set_mdoc_trust(TrustAnchors::default());
    // The cache was cleared with the trust list: the issuer is checked again, and unknown.
    assert_eq!(
        verdict(&e, "age-mac", mac_item(), NOW).reason,
        Reason::UnknownIssuer
    );
}

#[test]
fn mdoc_and_tokens_share_a_batch_and_each_gets_its_own_verdict() {
    let e = engine();
    let age = e.scanner("age").unwrap();
    let items = vec![
        Item::new(Arc::clone(&age), b"not a token".to_vec()),
        Item::mdoc(Arc::clone(&age), sig_item(NOW)),
        Item::mdoc(
            Arc::clone(&age),
            MdocItem {
                device_response: b"\xa0".to_vec(),
                ..sig_item(NOW)
            },
        ),
    ];
    let v = e.verify_batch_serial(&items, NOW);
    let reasons: Vec<Reason> = v.iter().map(|v| v.reason).collect();
    assert_eq!(
        reasons,
        [Reason::Malformed, Reason::Accepted, Reason::Malformed]
    );
}

/// End to end over QUIC: a reader (the reference client) sends VerifyMdoc to a node whose
/// clock stands at NOW; the verdict comes back with what the age counter may learn, the same
/// session again is `replayed`, and a garbled response is `malformed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_sends_a_presentation_over_quic_and_the_session_is_used_once() {
    use gatehouse_engine::client::{ClientIdentity, ScannerClient};
    use gatehouse_engine::dev::pki::DevPki;
    use gatehouse_engine::server::{self, ServerConfig};
    use gatehouse_protocol::MdocRequest;

    let pki = DevPki::generate(&["age".to_string()]).unwrap();
    let engine = Arc::new(engine_with(EngineConfig {
        threads: 1,
        replay_capacity: 1000,
        issuer_cache_capacity: 1000,
        ..EngineConfig::default()
    }));
    let mut config = ServerConfig::new(
        pki.server.chain(),
        pki.server.key(),
        vec![pki.ca.cert_der.clone()],
    );
    config.clock = Arc::new(ManualClock::at(NOW));
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server::run(engine, config, socket, None, async move {
        let _ = stopped.await;
    }));
    let s = pki.scanner("age").unwrap();
    let identity = ClientIdentity {
        roots: vec![pki.ca.cert_der.clone()],
        chain: s.chain(),
        key: s.key(),
    };
    let client = ScannerClient::connect(addr, "localhost", identity)
        .await
        .unwrap();
    let request = MdocRequest {
        id: 0,
        device_response: file("device_response_sig.cbor"),
        transcript: file("transcript_sig.cbor"),
        retry: None,
        session_start: NOW,
        reader_key: None,
    };
    let v = client.verify_mdoc(request.clone()).await.unwrap();
    assert_eq!(v.reason, Reason::Accepted);
    assert_eq!(v.attributes.predicate, Some(Predicate::IsoAgeOver19));
    let again = client.verify_mdoc(request.clone()).await.unwrap();
    assert_eq!(again.reason, Reason::Replayed);
    let garbled = MdocRequest {
        device_response: vec![0xa1, 0x61, 0x61],
        ..request
    };
    assert_eq!(
        client.verify_mdoc(garbled).await.unwrap().reason,
        Reason::Malformed
    );
    client.close().await;
    let _ = stop.send(());
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), task).await;
}

/// n − s for a big-endian 32-byte s (P-256's group order n).
fn negate_s(s: &[u8]) -> [u8; 32] {
    let n =
        hex::decode("ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551").unwrap();
    let mut out = [0u8; 32];
    let mut borrow = 0i16;
    for i in (0..32).rev() {
        let d = i16::from(n[i]) - i16::from(s[i]) - borrow;
        borrow = i16::from(d < 0);
        out[i] = (d + 256 * borrow) as u8;
    }
    out
}

/// Ten presentations in one batch: on the multi-buffer path (where this CPU runs it) their
/// device signatures are checked eight to a call, with a low s; a high-s signature (what stock
/// wallets send half the time) is accepted all the same, a damaged one is denied, and every
/// verdict is the one a presentation checked alone gets.
#[test]
fn a_batch_of_presentations_keeps_every_verdict_on_the_multibuffer_path() {
    use gatehouse_engine::dev::mdoc_population::MdocPopulation;
    use gatehouse_engine::dev::population::standard_scanners;
    let pop = MdocPopulation::generate(3, 12, NOW as i64).unwrap();
    let e = Engine::new(
        EngineConfig::default(),
        TrustList::new(),
        standard_scanners(),
    )
    .unwrap();
    e.set_mdoc_trust(pop.anchors().unwrap());
    let age = e.scanner("age-1").unwrap();
    let mut requests: Vec<_> = (0..10u8)
        .map(|i| pop.present(usize::from(i), &[i], NOW))
        .collect();
    // The signature is the last bstr(64) before the closing "status": 0.
    let flip = |bytes: &mut Vec<u8>| {
        let end = bytes.len() - 8;
        let s = negate_s(&bytes[end - 32..end]);
        bytes[end - 32..end].copy_from_slice(&s);
    };
    flip(&mut requests[1].device_response);
    let last = requests[9].device_response.len() - 9;
    requests[9].device_response[last] ^= 1;
    let items: Vec<Item> = requests
        .iter()
        .map(|r| Item::mdoc(Arc::clone(&age), r.clone().into()))
        .collect();
    let verdicts = e.verify_batch_serial(&items, NOW);
    for (i, v) in verdicts.iter().enumerate() {
        let want = match i {
            9 => Verdict::deny(Reason::BadDeviceSignature),
            _ => pop.expected(i, &age, NOW, e.config().utc_offset_secs),
        };
        assert_eq!(*v, want, "presentation {i}");
    }
    // Holder 0 and 5 are under 19: not eligible; the others accepted, the high s among them.
    assert_eq!(verdicts[1].reason, Reason::Accepted);
    eprintln!("batch path: {}", e.batching().label());
    if e.batching() == Batching::Multibuffer {
        let stats = e.batch_stats();
        assert_eq!(stats.mb_calls(), 1, "one call of eight, two singles");
        assert_eq!(stats.mb_signatures(), 8);
    }
    // One by one, the same verdicts (a fresh engine: the sessions are used once).
    let single = Engine::new(
        EngineConfig {
            batch: BatchMode::Off,
            ..EngineConfig::default()
        },
        TrustList::new(),
        standard_scanners(),
    )
    .unwrap();
    single.set_mdoc_trust(pop.anchors().unwrap());
    for (i, it) in items.iter().enumerate() {
        let v = single.verify_batch_serial(std::slice::from_ref(it), NOW);
        assert_eq!(v[0], verdicts[i], "presentation {i} alone");
    }
}
