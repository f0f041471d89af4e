//! `gatehouse mdoc …`: test ISO/IEC 18013-5 mDL documents, made with
//! [`gatehouse_engine::dev::mdoc`]. **TEST KEYS ONLY**: every key is written in clear and
//! every certificate says TEST ONLY in its name; they are for exercising a verifier, never
//! for trust in production.
//!
//! The work is in functions of their inputs and `now` (Unix seconds), which return the files
//! they wrote; [`run`] turns the arguments into calls and the results into lines of output.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use gatehouse_engine::dev::mdoc::{
    age_at, mdl_elements_for_test, Element, MdlDocument, ReaderSession, TestIaca, TestSigner,
};

use crate::cli::args::{MdocCommand, MdocIacaArgs, MdocIssueArgs, MdocPresentArgs, MdocSignerArgs};
use crate::cli::output::out;
use crate::cli::runtime::now;
use crate::cli::tools::{generate_key, read_key, refuse_overwrite, write_key};

/// Certificates start this long before they are made, for clocks a little behind.
const CERT_BACKDATE: i64 = 3600;
/// A document's validity starts this long before it is issued.
const DOC_BACKDATE: i64 = 60;
const DAY: i64 = 86_400;

/// Runs one `gatehouse mdoc` command.
pub fn run(command: MdocCommand) -> Result<ExitCode> {
    let now = i64::try_from(now()).unwrap_or(i64::MAX);
    let (what, written) = match command {
        MdocCommand::Iaca(a) => ("test IACA (TEST ONLY)", iaca(&a, now)?),
        MdocCommand::Signer(a) => ("test document signer (TEST ONLY)", signer(&a, now)?),
        MdocCommand::Issue(a) => ("test mDL and its device key (TEST ONLY)", issue(&a, now)?),
        MdocCommand::Present(a) if a.mac => (
            "device response (device MAC) and its reader session",
            present(&a, now)?,
        ),
        MdocCommand::Present(a) => (
            "device response (device signature) and its reader session",
            present(&a, now)?,
        ),
    };
    out!("{what}:");
    for path in written {
        out!("  {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes `text` to `path`, readable by the owner only when `secret` (Unix).
fn write(path: &Path, bytes: &[u8], secret: bool) -> Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    options
        .open(path)
        .and_then(|mut f| f.write_all(bytes))
        .with_context(|| format!("writing {}", path.display()))
}

fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

fn create_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}

/// `mdoc iaca`: `iaca.pem` and `iaca.key` in `--out`.
pub fn iaca(a: &MdocIacaArgs, now: i64) -> Result<Vec<PathBuf>> {
    let (cert, key) = (a.out.join("iaca.pem"), a.out.join("iaca.key"));
    refuse_overwrite(&[cert.clone(), key.clone()], a.force)?;
    let iaca = TestIaca::generate(
        &a.country,
        a.state.as_deref(),
        &a.name,
        now - CERT_BACKDATE,
        now + i64::from(a.days) * DAY,
    )?;
    create_dir(&a.out)?;
    write(&cert, iaca.cert_pem().as_bytes(), false)?;
    write(&key, iaca.key_pem().as_bytes(), true)?;
    Ok(vec![cert, key])
}

/// `mdoc signer`: `ds.pem` and `ds.key` in `--out`, issued by the IACA in `--iaca`.
pub fn signer(a: &MdocSignerArgs, now: i64) -> Result<Vec<PathBuf>> {
    let (cert, key) = (a.out.join("ds.pem"), a.out.join("ds.key"));
    refuse_overwrite(&[cert.clone(), key.clone()], a.force)?;
    let iaca = TestIaca::from_pem(
        &read_text(&a.iaca.join("iaca.pem"))?,
        &read_text(&a.iaca.join("iaca.key"))?,
    )
    .with_context(|| format!("the IACA in {}", a.iaca.display()))?;
    let ds = iaca.document_signer(&a.name, now - CERT_BACKDATE, now + i64::from(a.days) * DAY)?;
    create_dir(&a.out)?;
    write(&cert, ds.cert_pem().as_bytes(), false)?;
    write(&key, ds.key_pem().as_bytes(), true)?;
    out!(
        "document signer fingerprint (a `signer` line of files.mdoc_revocations): {}",
        hex::encode(ds.fingerprint())
    );
    Ok(vec![cert, key])
}

/// `FILE.device-key` beside a document file.
pub fn device_key_path(document: &Path) -> PathBuf {
    let mut name = OsString::from(document.as_os_str());
    name.push(".device-key");
    PathBuf::from(name)
}

/// An `--element` value: `true`/`false` a boolean, digits an unsigned integer (unless a
/// leading zero or the size would be lost: then text), a valid `YYYY-MM-DD` a full-date,
/// anything else text.
fn element_value(value: &str) -> Element {
    match value {
        "true" => Element::Bool(true),
        "false" => Element::Bool(false),
        v if v.bytes().all(|b| b.is_ascii_digit()) && (v == "0" || !v.starts_with('0')) => {
            match v.parse() {
                Ok(n) => Element::Uint(n),
                Err(_) => Element::Text(v.to_string()),
            }
        }
        v if age_at(v, 0).is_some() => Element::FullDate(v.to_string()),
        v => Element::Text(v.to_string()),
    }
}

/// The test holder's elements for `birth_date` (ages as of `now`), with `extra` added or
/// replacing what is there.
pub fn elements(
    birth_date: &str,
    extra: &[(String, String)],
    now: i64,
) -> Result<Vec<(String, Element)>> {
    let Some(age) = age_at(birth_date, now) else {
        bail!("birth date {birth_date:?} is not a date as YYYY-MM-DD");
    };
    let mut all: Vec<(String, Element)> = mdl_elements_for_test(birth_date, age >= 19)
        .into_iter()
        .map(|(n, e)| (n.to_string(), e))
        .collect();
    for (name, over) in [("age_over_18", 18), ("age_over_21", 21)] {
        if let Some(slot) = all.iter_mut().find(|(n, _)| n == name) {
            slot.1 = Element::Bool(age >= over);
        }
    }
    for (name, value) in extra {
        let value = element_value(value);
        match all.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => slot.1 = value,
            None => all.push((name.clone(), value)),
        }
    }
    Ok(all)
}

/// `mdoc issue`: the document in `--out` and its device key (hex) in `--out`.device-key.
pub fn issue(a: &MdocIssueArgs, now: i64) -> Result<Vec<PathBuf>> {
    let key_path = device_key_path(&a.out);
    refuse_overwrite(&[a.out.clone(), key_path.clone()], a.force)?;
    let signer = TestSigner::from_pem(
        &read_text(&a.signer.join("ds.pem"))?,
        &read_text(&a.signer.join("ds.key"))?,
    )
    .with_context(|| format!("the document signer in {}", a.signer.display()))?;
    let all = elements(&a.birth_date, &a.elements, now)?;
    let view: Vec<(&str, Element)> = all.iter().map(|(n, e)| (n.as_str(), e.clone())).collect();
    let device = generate_key()?;
    let seed = random_seed()?;
    let doc = signer.issue(
        &view,
        now - DOC_BACKDATE,
        now + i64::from(a.days) * DAY,
        &device,
        &seed,
    )?;
    if let Some(dir) = a.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        create_dir(dir)?;
    }
    write(&a.out, &doc.to_bytes(), false)?;
    write_key(&key_path, &device)?;
    Ok(vec![a.out.clone(), key_path])
}

fn random_seed() -> Result<[u8; 32]> {
    use rand_core::{OsRng, RngCore};
    let mut seed = [0u8; 32];
    OsRng
        .try_fill_bytes(&mut seed)
        .context("reading the system's random source")?;
    Ok(seed)
}

/// `mdoc present`: a device response to a fresh reader session, and what a verifier needs
/// with it, in `--out`.
pub fn present(a: &MdocPresentArgs, now: i64) -> Result<Vec<PathBuf>> {
    let bytes =
        std::fs::read(&a.document).with_context(|| format!("reading {}", a.document.display()))?;
    let doc = MdlDocument::from_bytes(&bytes)
        .with_context(|| format!("reading {}", a.document.display()))?;
    let device = read_key(&device_key_path(&a.document))?;
    let disclose: Vec<&str> = match &a.disclose {
        None => doc.identifiers().collect(),
        Some(names) => names.iter().map(String::as_str).collect(),
    };
    if let Some(missing) = disclose
        .iter()
        .find(|n| !doc.identifiers().any(|i| i == **n))
    {
        let known: Vec<&str> = doc.identifiers().collect();
        bail!(
            "the document has no element {missing:?} (it has {})",
            known.join(", ")
        );
    }
    let session = ReaderSession::new(&random_seed()?);
    let response = if a.mac {
        doc.present_mac(&device, &session, &disclose)
    } else {
        doc.present(&device, &session, &disclose)
    };
    create_dir(&a.out)?;
    let files = [
        ("device_response.cbor", response, false),
        ("transcript.cbor", session.transcript.clone(), false),
        (
            "reader_key.hex",
            format!("{}\n", hex::encode(session.reader_key)).into_bytes(),
            true,
        ),
        ("session_start", format!("{now}\n").into_bytes(), false),
    ];
    let mut written = Vec::with_capacity(files.len());
    for (name, bytes, secret) in files {
        let path = a.out.join(name);
        write(&path, &bytes, secret)?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use gatehouse_engine::dev::mdoc::verify_presentation;

    #[test]
    fn the_four_steps_make_a_presentation_that_verifies() {
        let dir = std::env::temp_dir().join(format!("gatehouse-mdoc-cli-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let now = 1_750_000_000;
        let iaca_dir = dir.join("iaca");
        iaca(
            &MdocIacaArgs {
                out: iaca_dir.clone(),
                country: "KR".into(),
                state: None,
                name: "cli test IACA".into(),
                days: 3650,
                force: false,
            },
            now,
        )
        .unwrap();
        let ds_dir = dir.join("ds");
        let signer_args = MdocSignerArgs {
            iaca: iaca_dir.clone(),
            out: ds_dir.clone(),
            name: "cli test DS".into(),
            days: 365,
            force: false,
        };
        signer(&signer_args, now).unwrap();
        // Nothing is replaced without --force.
        assert!(signer(&signer_args, now)
            .unwrap_err()
            .to_string()
            .contains("--force"));
        let document = dir.join("holder.mdoc");
        issue(
            &MdocIssueArgs {
                signer: ds_dir,
                out: document.clone(),
                birth_date: "2008-01-01".into(),
                elements: vec![
                    ("family_name".into(), "KIM".into()),
                    ("resident_postal_code".into(), "04524".into()),
                ],
                days: 30,
                force: false,
            },
            now,
        )
        .unwrap();
        let iaca_der = {
            let pem = std::fs::read_to_string(iaca_dir.join("iaca.pem")).unwrap();
            TestIaca::from_pem(
                &pem,
                &std::fs::read_to_string(iaca_dir.join("iaca.key")).unwrap(),
            )
            .unwrap()
            .cert_der
        };
        for mac in [false, true] {
            let out = dir.join(format!("session-{mac}"));
            let args = MdocPresentArgs {
                document: document.clone(),
                disclose: Some(vec!["age_over_18".into(), "family_name".into()]),
                mac,
                out: out.clone(),
            };
            present(&args, now).unwrap();
            let response = std::fs::read(out.join("device_response.cbor")).unwrap();
            let transcript = std::fs::read(out.join("transcript.cbor")).unwrap();
            let reader: [u8; 32] = hex::decode(
                std::fs::read_to_string(out.join("reader_key.hex"))
                    .unwrap()
                    .trim(),
            )
            .unwrap()
            .try_into()
            .unwrap();
            let start = std::fs::read_to_string(out.join("session_start")).unwrap();
            assert_eq!(start.trim(), now.to_string());
            verify_presentation(
                &iaca_der,
                &response,
                &transcript,
                mac.then_some(&reader),
                now + 60,
            )
            .unwrap();
        }
        // The defaults and the overrides are in the document; the ages follow the birth date.
        let doc = MdlDocument::from_bytes(&std::fs::read(&document).unwrap()).unwrap();
        assert!(doc.identifiers().any(|i| i == "resident_postal_code"));
        let all = elements("2008-01-01", &[("x".into(), "2001-02-03".into())], now).unwrap();
        let get = |n: &str| all.iter().find(|(k, _)| k == n).map(|(_, e)| e.clone());
        assert_eq!(get("age_over_18"), Some(Element::Bool(false)));
        assert_eq!(get("age_over_19"), Some(Element::Bool(false)));
        assert_eq!(get("x"), Some(Element::FullDate("2001-02-03".into())));
        assert_eq!(element_value("04524"), Element::Text("04524".into()));
        assert_eq!(element_value("300"), Element::Uint(300));
        assert_eq!(element_value(""), Element::Text(String::new()));
        assert_eq!(element_value("true"), Element::Bool(true));
        assert_eq!(element_value("Seoul"), Element::Text("Seoul".into()));
        // An element the document lacks cannot be disclosed.
        let bad = MdocPresentArgs {
            document,
            disclose: Some(vec!["portrait".into()]),
            mac: false,
            out: dir.join("bad"),
        };
        assert!(present(&bad, now)
            .unwrap_err()
            .to_string()
            .contains("portrait"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
