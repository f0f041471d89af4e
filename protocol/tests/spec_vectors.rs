//! Keeps `SPEC.md` honest: its test-vector section is exactly what
//! `gatehouse_protocol::vectors::render_markdown()` produces, every vector parsed back out of
//! the markdown is the vector itself, and every token vector gets its stated verdict.
//!
//! To regenerate the section after a deliberate change to the formats or the vectors:
//!
//! ```text
//! GATEHOUSE_BLESS=1 cargo test -p gatehouse-protocol --test spec_vectors
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::sync::OnceLock;

use gatehouse_protocol::vectors::{self, reference_check, Vector};
use gatehouse_protocol::{
    from_qr_text, CredentialType, HolderCategory, PrivateKey, PublicKey, Reason, TokenParams,
};

const BEGIN: &str = "<!-- BEGIN TEST VECTORS (generated: GATEHOUSE_BLESS=1 cargo test -p gatehouse-protocol --test spec_vectors) -->";
const END: &str = "<!-- END TEST VECTORS -->";
const REGENERATE: &str = "GATEHOUSE_BLESS=1 cargo test -p gatehouse-protocol --test spec_vectors";

fn spec_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("SPEC.md")
}

fn blessing() -> bool {
    std::env::var("GATEHOUSE_BLESS").is_ok_and(|v| v == "1")
}

/// Byte range of the generated section: from just after the BEGIN line to the start of the
/// END line.
fn section_range(spec: &str) -> std::ops::Range<usize> {
    assert_eq!(
        spec.matches(BEGIN).count(),
        1,
        "SPEC.md must hold the line `{BEGIN}` exactly once"
    );
    assert_eq!(
        spec.matches(END).count(),
        1,
        "SPEC.md must hold the line `{END}` exactly once"
    );
    let begin = spec.find(BEGIN).unwrap_or_default();
    let end = spec.find(END).unwrap_or_default();
    assert!(
        begin == 0 || spec[..begin].ends_with('\n'),
        "the BEGIN marker must start a line"
    );
    assert!(
        spec[begin + BEGIN.len()..].starts_with('\n'),
        "the BEGIN marker must end its line"
    );
    let start = begin + BEGIN.len() + 1;
    assert!(start <= end, "the END marker must follow the BEGIN marker");
    assert!(
        spec[..end].ends_with('\n'),
        "the END marker must start a line"
    );
    start..end
}

fn rendered() -> String {
    vectors::render_markdown().expect("the vectors render")
}

/// SPEC.md as the tests see it. With `GATEHOUSE_BLESS=1` the vector section is rewritten
/// first, once, before any test reads the file.
fn spec() -> &'static str {
    static SPEC: OnceLock<String> = OnceLock::new();
    SPEC.get_or_init(|| {
        let path = spec_path();
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        if !blessing() {
            return text;
        }
        let range = section_range(&text);
        let mut blessed = String::with_capacity(text.len());
        blessed.push_str(&text[..range.start]);
        blessed.push_str(&rendered());
        blessed.push_str(&text[range.end..]);
        if blessed != text {
            std::fs::write(&path, &blessed)
                .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        }
        blessed
    })
}

fn vector_section() -> &'static str {
    let s = spec();
    &s[section_range(s)]
}

fn all_vectors() -> Vec<Vector> {
    vectors::all().expect("the vectors build")
}

fn first_difference(a: &str, b: &str) -> String {
    for (i, (x, y)) in a.lines().zip(b.lines()).enumerate() {
        if x != y {
            return format!(
                "first difference at line {} of the section:\n  SPEC.md:   {x:?}\n  generated: {y:?}",
                i + 1
            );
        }
    }
    format!(
        "the section has {} lines, the generated text {}",
        a.lines().count(),
        b.lines().count()
    )
}

#[test]
fn the_vector_section_is_exactly_the_generated_text() {
    let in_spec = vector_section();
    let generated = rendered();
    assert!(
        in_spec == generated,
        "the test-vector section of SPEC.md differs from vectors::render_markdown() \
         (vectors are generated, never edited by hand); {}.\n\
         If the change to the formats or vectors is deliberate, regenerate with:\n    {REGENERATE}",
        first_difference(in_spec, &generated)
    );
}

#[test]
fn every_token_vector_gets_its_expected_verdict() {
    let issuer = vectors::issuer_key();
    let kid = issuer.public().key_id();
    let trust = [(&kid, issuer.public())];
    let mut checked = 0;
    for v in all_vectors() {
        if let Some(expect) = v.expect {
            let got = reference_check(
                &v.bytes,
                &trust,
                vectors::NOW,
                TokenParams::default(),
                5,
                true,
            );
            assert_eq!(got, expect, "vector {}", v.name);
            checked += 1;
        }
    }
    assert!(
        checked >= 5,
        "only {checked} vectors carry an expected verdict"
    );
}

/// One vector as read back from the markdown.
#[derive(Debug)]
struct Parsed {
    name: String,
    len: usize,
    expect: Option<(String, u64)>,
    hex_blocks: Vec<String>,
    qr_text: Option<String>,
}

/// Reads the `####` entries of the vector section: the byte count, the expected verdict,
/// the hex block, and the QR text block if there is one.
fn parse_vectors(section: &str) -> Vec<Parsed> {
    let mut out: Vec<Parsed> = Vec::new();
    let mut lines = section.lines();
    let mut qr_next = false;
    while let Some(line) = lines.next() {
        if let Some(rest) = line.strip_prefix("#### ") {
            let name = rest
                .strip_prefix('`')
                .and_then(|r| r.strip_suffix('`'))
                .unwrap_or_else(|| panic!("vector heading {line:?} is not #### `name`"));
            out.push(Parsed {
                name: name.to_owned(),
                len: usize::MAX,
                expect: None,
                hex_blocks: Vec::new(),
                qr_text: None,
            });
            qr_next = false;
            continue;
        }
        let Some(current) = out.last_mut() else {
            continue;
        };
        if let Some(body) = line.strip_suffix(" bytes).") {
            if let Some(open) = body.rfind('(') {
                current.len = body[open + 1..]
                    .parse()
                    .unwrap_or_else(|_| panic!("bad byte count in {line:?}"));
            }
        } else if let Some(rest) = line.strip_prefix("Expected verdict at NOW: `") {
            let (label, code) = rest
                .split_once("` (")
                .unwrap_or_else(|| panic!("bad verdict line {line:?}"));
            let code = code
                .strip_suffix(").")
                .and_then(|c| c.parse().ok())
                .unwrap_or_else(|| panic!("bad verdict line {line:?}"));
            current.expect = Some((label.to_owned(), code));
        } else if line == "QR text form:" {
            qr_next = true;
        } else if line == "```text" {
            let mut block = String::new();
            for l in lines.by_ref() {
                if l == "```" {
                    break;
                }
                block.push_str(l);
            }
            if qr_next {
                current.qr_text = Some(block);
                qr_next = false;
            } else {
                current.hex_blocks.push(block);
            }
        }
    }
    out
}

/// The value of a `- label: `value`` line of the section.
fn key_line(section: &str, label: &str) -> String {
    let prefix = format!("- {label}: `");
    section
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|r| r.strip_suffix('`'))
        .unwrap_or_else(|| panic!("the vector section has no line `{prefix}…`"))
        .to_owned()
}

fn unhex(s: &str, what: &str) -> Vec<u8> {
    hex::decode(s).unwrap_or_else(|e| panic!("{what} is not hex: {e}"))
}

#[test]
fn every_hex_block_in_the_spec_decodes_to_its_vector() {
    let parsed = parse_vectors(vector_section());
    let vectors = all_vectors();
    let names: Vec<&str> = parsed.iter().map(|p| p.name.as_str()).collect();
    let expected: Vec<&str> = vectors.iter().map(|v| v.name).collect();
    assert_eq!(names, expected, "vector names and order in SPEC.md");
    for (p, v) in parsed.iter().zip(&vectors) {
        assert_eq!(p.hex_blocks.len(), 1, "vector {} has one hex block", p.name);
        let bytes = unhex(&p.hex_blocks[0], &format!("vector {}", p.name));
        assert!(bytes == v.bytes, "the hex of vector {} in SPEC.md", p.name);
        assert_eq!(
            p.len,
            bytes.len(),
            "byte count stated for vector {}",
            p.name
        );
        let expect = v
            .expect
            .map(|r| (r.label().to_owned(), u64::from(r.code())));
        assert_eq!(p.expect, expect, "verdict stated for vector {}", p.name);
        if let Some(qr) = &p.qr_text {
            let from_qr =
                from_qr_text(qr).unwrap_or_else(|e| panic!("QR text of vector {}: {e}", p.name));
            assert!(
                from_qr == v.bytes,
                "QR text of vector {} decodes to its bytes",
                p.name
            );
        }
    }
    assert!(
        parsed.iter().any(|p| p.qr_text.is_some()),
        "the section shows a QR text form"
    );
}

/// An implementer who reads only SPEC.md: the keys, NOW and the vectors as printed, checked
/// with the reference verifier, give the printed verdicts.
#[test]
fn the_printed_keys_and_vectors_agree_with_each_other() {
    let section = vector_section();
    let issuer_private = unhex(&key_line(section, "issuer private key"), "issuer key");
    let issuer_private: [u8; 32] = issuer_private.try_into().expect("32-byte issuer scalar");
    let issuer = PrivateKey::from_bytes(&issuer_private).expect("issuer scalar is valid");
    let issuer_public = unhex(
        &key_line(section, "issuer public key (SEC1 compressed)"),
        "issuer public key",
    );
    assert_eq!(
        issuer.public().compressed().as_slice(),
        issuer_public.as_slice()
    );
    let issuer_public = PublicKey::from_sec1(&issuer_public).expect("issuer point is valid");
    let kid = unhex(&key_line(section, "issuer key id"), "issuer key id");
    assert_eq!(issuer_public.key_id().as_slice(), kid.as_slice());
    let device_private = unhex(&key_line(section, "device private key"), "device key");
    let device_private: [u8; 32] = device_private.try_into().expect("32-byte device scalar");
    let device = PrivateKey::from_bytes(&device_private).expect("device scalar is valid");
    let device_public = unhex(
        &key_line(section, "device public key (SEC1 compressed)"),
        "device public key",
    );
    assert_eq!(
        device.public().compressed().as_slice(),
        device_public.as_slice()
    );

    let now: u64 = section
        .lines()
        .find_map(|l| l.strip_prefix("- NOW = "))
        .and_then(|r| r.split(';').next())
        .and_then(|n| n.parse().ok())
        .expect("a `- NOW = …;` line");
    assert_eq!(now, vectors::NOW);

    let kid = issuer_public.key_id();
    let trust = [(&kid, &issuer_public)];
    for p in parse_vectors(section) {
        let Some((label, code)) = &p.expect else {
            continue;
        };
        let bytes = unhex(&p.hex_blocks[0], &p.name);
        let got = reference_check(&bytes, &trust, now, TokenParams::default(), 5, true);
        assert_eq!(got.label(), label, "vector {}", p.name);
        assert_eq!(u64::from(got.code()), *code, "vector {}", p.name);
    }
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// The reason table and the enumeration tables are copies of the code: each row must be there.
#[test]
fn the_spec_tables_match_the_code() {
    let spec = spec();
    for r in Reason::ALL {
        let row = format!(
            "| {} | `{}` | {} | {} |",
            r.code(),
            r.label(),
            r.describe(),
            yes_no(r.is_retryable())
        );
        assert!(spec.contains(&row), "SPEC.md lacks the reason row\n{row}");
    }
    for t in CredentialType::ALL {
        let row = format!("| {} | `{}` |", t.code(), t.label());
        assert!(
            spec.contains(&row),
            "SPEC.md lacks the credential type row {row}"
        );
    }
    for c in HolderCategory::ALL {
        let row = format!(
            "| {} | `{}` | {} |",
            c.code(),
            c.label(),
            yes_no(c.is_family())
        );
        assert!(
            spec.contains(&row),
            "SPEC.md lacks the holder category row {row}"
        );
    }
}

/// A named annotated block: runs of shown bytes, `None` where bytes are left out.
type Annotated = (String, Vec<Option<Vec<u8>>>);

/// The annotated examples outside the generated section: each `<!-- annotated: NAME -->`
/// block is a list of lines `HEX  comment`; a line whose hex is `..` stands for bytes left
/// out. The hex, segment by segment, must be the named bytes: the first segment at the start,
/// each later one after the previous, and the last at the end unless the block ends with `..`.
///
/// Returns each block's name and its runs of shown bytes, `None` where bytes are left out.
fn annotated_blocks(spec: &str) -> Vec<Annotated> {
    let mut out = Vec::new();
    let mut lines = spec.lines();
    while let Some(line) = lines.next() {
        let Some(name) = line
            .strip_prefix("<!-- annotated: ")
            .and_then(|r| r.strip_suffix(" -->"))
        else {
            continue;
        };
        assert_eq!(
            lines.next(),
            Some("```text"),
            "annotated block {name} opens a ```text block"
        );
        // `None` marks a gap; `Some(bytes)` a run of shown bytes.
        let mut parts: Vec<Option<Vec<u8>>> = Vec::new();
        for l in lines.by_ref() {
            if l == "```" {
                break;
            }
            let l = l.trim_start();
            let hex_part = l.split("  ").next().unwrap_or_default().trim();
            if hex_part == ".." {
                parts.push(None);
                continue;
            }
            let bytes = unhex(
                &hex_part.replace(' ', ""),
                &format!("annotated block {name}, line {l:?}"),
            );
            match parts.last_mut() {
                Some(Some(run)) => run.extend_from_slice(&bytes),
                _ => parts.push(Some(bytes)),
            }
        }
        out.push((name.to_owned(), parts));
    }
    out
}

fn find_from(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    haystack
        .get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|i| i + from)
}

#[test]
fn every_annotated_example_matches_the_bytes_it_shows() {
    let vectors = all_vectors();
    let bytes_of = |name: &str| -> Vec<u8> {
        let vector = |n: &str| {
            vectors
                .iter()
                .find(|v| v.name == n)
                .unwrap_or_else(|| panic!("no vector {n}"))
                .bytes
                .clone()
        };
        match name {
            "token Sig_structure" => gatehouse_protocol::Token::decode(&vector("token"))
                .expect("the token vector decodes")
                .to_be_signed(),
            "credential Sig_structure" => {
                gatehouse_protocol::SignedCredential::decode(&vector("credential"))
                    .expect("the credential vector decodes")
                    .to_be_signed()
            }
            n => vector(n),
        }
    };
    let blocks = annotated_blocks(spec());
    assert!(
        blocks.len() >= 4,
        "SPEC.md has {} annotated blocks",
        blocks.len()
    );
    for (name, parts) in blocks {
        let bytes = bytes_of(&name);
        let mut pos = 0;
        let mut after_gap = false;
        for part in &parts {
            match part {
                None => after_gap = true,
                Some(run) => {
                    let at = if after_gap {
                        find_from(&bytes, run, pos)
                    } else {
                        bytes
                            .get(pos..pos + run.len())
                            .and_then(|b| (b == run).then_some(pos))
                    };
                    let at = at.unwrap_or_else(|| {
                        let end = (pos + run.len()).min(bytes.len());
                        panic!(
                            "annotated block {name} in SPEC.md shows bytes that are not the \
                             {name} bytes at offset {pos}:\n  shown:  {}\n  actual: {}",
                            hex::encode(run),
                            hex::encode(&bytes[pos.min(end)..end])
                        )
                    });
                    pos = at + run.len();
                    after_gap = false;
                }
            }
        }
        if !after_gap {
            assert_eq!(
                pos,
                bytes.len(),
                "annotated block {name} shows {pos} of {} bytes and does not end with `..`",
                bytes.len()
            );
        }
    }
}
