//! A test issuing authority and a pool of mDL holders, for the demo and the load harness to mix
//! ISO/IEC 18013-5 presentations into a rush: one IACA, one document signer, `count` documents
//! with their device keys, and the verdict each scanner should give a fresh presentation.
//! **TEST KEYS ONLY.**

use gatehouse_core::{decide_mdoc, Disclosed, Scanner};
use gatehouse_mdoc::{Iaca, TrustAnchors, MDL_DOCTYPE};
use gatehouse_protocol::{MdocRequest, PrivateKey, Verdict};
use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::mdoc::{
    mdl_elements_for_test, MdlDocument, MdocToolError, ReaderSession, TestIaca, TestSigner,
};

/// The issuing authority the pool's IACA names (its subject's country).
pub const AUTHORITY: &str = "KR";
/// What a reader asks the phone to disclose, at every scanner.
pub const DISCLOSED: [&str; 2] = ["age_over_19", "document_number"];

/// One test holder of an mDL.
pub struct MdocHolder {
    /// The issued document.
    pub document: MdlDocument,
    /// Its device key (TEST KEY ONLY).
    pub device: PrivateKey,
    /// Whether the document says `age_over_19`.
    pub age_over_19: bool,
}

/// A test IACA, its document signer and a pool of holders.
pub struct MdocPopulation {
    /// The IACA (what the nodes trust: `files.mdoc_iaca`).
    pub iaca: TestIaca,
    /// The document signer.
    pub signer: TestSigner,
    /// The holders.
    pub holders: Vec<MdocHolder>,
    /// The documents' validUntil, Unix seconds.
    pub valid_until: i64,
    /// The end of the signer's certificate.
    pub signer_until: i64,
}

/// The device key of holder `i` of the pool seeded `seed`.
fn device_key(seed: u64, i: usize) -> PrivateKey {
    let mut counter = 0u64;
    loop {
        let mut h = Sha256::new();
        h.update(b"gatehouse test mdoc device");
        h.update(seed.to_be_bytes());
        h.update((i as u64).to_be_bytes());
        h.update(counter.to_be_bytes());
        if let Ok(k) = PrivateKey::from_bytes(&h.finalize().into()) {
            return k;
        }
        counter += 1;
    }
}

impl MdocPopulation {
    /// `count` holders (one in five under 19), documents valid from a day before `now` for 30
    /// days; the IACA and the signer valid from a year before `now` for two and one years.
    pub fn generate(seed: u64, count: usize, now: i64) -> Result<MdocPopulation, MdocToolError> {
        const DAY: i64 = 86_400;
        let iaca = TestIaca::generate(
            AUTHORITY,
            None,
            "gatehouse demo IACA",
            now - 365 * DAY,
            now + 365 * DAY,
        )?;
        let signer_until = now + 180 * DAY;
        let signer = iaca.document_signer(
            "gatehouse demo document signer",
            now - 30 * DAY,
            signer_until,
        )?;
        let valid_until = now + 30 * DAY;
        let holders = (0..count)
            .into_par_iter()
            .map(|i| {
                let age_over_19 = i % 5 != 0;
                let birth = if age_over_19 {
                    "1990-05-01"
                } else {
                    "2015-05-01"
                };
                let device = device_key(seed, i);
                let document = signer.issue(
                    &mdl_elements_for_test(birth, age_over_19),
                    now - DAY,
                    valid_until,
                    &device,
                    &[seed.to_be_bytes(), (i as u64).to_be_bytes()].concat(),
                )?;
                Ok(MdocHolder {
                    document,
                    device,
                    age_over_19,
                })
            })
            .collect::<Result<Vec<_>, MdocToolError>>()?;
        Ok(MdocPopulation {
            iaca,
            signer,
            holders,
            valid_until,
            signer_until,
        })
    }

    /// The IACA list the nodes trust.
    pub fn anchors(&self) -> Result<TrustAnchors, MdocToolError> {
        Ok(TrustAnchors::new(vec![Iaca::from_der(
            &self.iaca.cert_der,
        )?]))
    }

    /// Holder `holder`'s presentation to a reader whose session began at `session_start`,
    /// the session's keys derived from `session_seed` (a fresh one per scan).
    pub fn present(&self, holder: usize, session_seed: &[u8], session_start: u64) -> MdocRequest {
        let h = &self.holders[holder % self.holders.len().max(1)];
        let session = ReaderSession::new(session_seed);
        MdocRequest {
            id: 0,
            device_response: h.document.present(&h.device, &session, &DISCLOSED),
            transcript: session.transcript,
            retry: None,
            session_start,
            reader_key: None,
        }
    }

    /// The verdict `scanner` should give a fresh presentation of holder `holder` at `now`
    /// (SPEC §12.4).
    pub fn expected(&self, holder: usize, scanner: &Scanner, now: u64, utc_offset: i32) -> Verdict {
        let h = &self.holders[holder % self.holders.len().max(1)];
        let disclosed = Disclosed {
            doc_type: MDL_DOCTYPE.to_string(),
            authority: AUTHORITY.to_string(),
            valid_until: u64::try_from(self.valid_until.min(self.signer_until)).unwrap_or(0),
            age_over_19: Some(h.age_over_19),
            birth_date: None,
        };
        decide_mdoc(scanner, &disclosed, now, utc_offset)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use gatehouse_core::{
        Engine, EngineConfig, Item, MdocPolicy, Role, ScannerRegistry, TrustList,
    };
    use gatehouse_protocol::Reason;
    use std::sync::Arc;

    #[test]
    fn presentations_get_the_verdicts_the_population_expects() {
        let now = 1_800_000_000;
        let pop = MdocPopulation::generate(7, 10, now).unwrap();
        let mut r = ScannerRegistry::new();
        r.insert(Scanner {
            id: "gate".into(),
            role: Role::Gate {
                unit: "1".parse().unwrap(),
                admits: vec![],
            },
            mdoc: MdocPolicy {
                doc_types: vec![MDL_DOCTYPE.into()],
                ..MdocPolicy::default()
            },
        });
        r.insert(Scanner {
            id: "age".into(),
            role: Role::AgeCheck,
            mdoc: MdocPolicy::default(),
        });
        r.insert(Scanner {
            id: "partner".into(),
            role: Role::Partner,
            mdoc: MdocPolicy::default(),
        });
        let engine = Engine::new(EngineConfig::default(), TrustList::new(), r).unwrap();
        engine.set_mdoc_trust(pop.anchors().unwrap());
        let mut reasons = Vec::new();
        for (i, id) in ["gate", "age", "partner", "age", "age", "age"]
            .iter()
            .enumerate()
        {
            let scanner = engine.scanner(id).unwrap();
            let request = pop.present(i, &(i as u64).to_be_bytes(), now as u64);
            let item = Item::mdoc(Arc::clone(&scanner), request.into());
            let got = engine.verify_batch(&[item], now as u64).pop().unwrap();
            assert_eq!(
                got,
                pop.expected(i, &scanner, now as u64, 9 * 3600),
                "holder {i} at {id}"
            );
            reasons.push(got.reason);
        }
        // Holder 0 is under 19; the others over: the pool exercises both answers.
        assert!(reasons.contains(&Reason::Accepted));
        assert!(reasons.contains(&Reason::NotEligible));
    }
}
