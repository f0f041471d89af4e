//! Synthetic holders, issuers and scanners: what tests, benches, `gatehouse demo` and the load
//! harness verify. Keys are derived from labels (SHA-256), so a population is reproducible from
//! its seed. TEST KEYS ONLY: nothing here is for real credentials.

use gatehouse_protocol::{
    Credential, CredentialType, Date, Entitlements, HolderCategory, Presentation, PrivateKey,
    RevocationEntry, RevocationKind, RevocationList, SignError, UnitPath,
};
use rayon::prelude::*;
use sha2::{Digest, Sha256};

use gatehouse_core::{IssuerKey, Role, Scanner, ScannerRegistry, TrustList, DEFAULT_GATE_ADMITS};

/// A deterministic test key from a label and an index.
pub fn derive_key(label: &str, index: u64) -> PrivateKey {
    let mut h = Sha256::new();
    h.update(label.as_bytes());
    h.update(index.to_be_bytes());
    let mut seed: [u8; 32] = h.finalize().into();
    loop {
        if let Ok(k) = PrivateKey::from_bytes(&seed) {
            return k;
        }
        seed = Sha256::digest(seed).into();
    }
}

/// A deterministic 16-byte id from a label and an index.
pub fn derive_id(label: &str, index: u64) -> [u8; 16] {
    let mut h = Sha256::new();
    h.update(label.as_bytes());
    h.update(index.to_be_bytes());
    let d = h.finalize();
    let mut id = [0u8; 16];
    id.copy_from_slice(&d[..16]);
    id
}

/// A holder: a device key and an issued credential.
#[derive(Clone)]
pub struct Holder {
    /// The phone's key.
    pub device: PrivateKey,
    /// The credential's fields.
    pub credential: Credential,
    /// The credential as issued (COSE_Sign1 bytes).
    pub issued: Vec<u8>,
}

impl Holder {
    /// Issues `credential` (whose `device_key` is replaced by `device`'s) with `issuer`.
    pub fn issue(
        issuer: &PrivateKey,
        device: PrivateKey,
        mut credential: Credential,
    ) -> Result<Holder, SignError> {
        credential.device_key = *device.public().compressed();
        let issued = credential.issue(issuer)?;
        Ok(Holder {
            device,
            credential,
            issued,
        })
    }

    /// A presentation token made at `timestamp` with this nonce.
    pub fn present(
        &self,
        timestamp: u64,
        nonce: [u8; 16],
        challenge: Option<&[u8]>,
    ) -> Result<Vec<u8>, SignError> {
        Presentation {
            credential: &self.issued,
            timestamp,
            nonce,
            challenge,
        }
        .sign(&self.device)
    }
}

/// A credential template with sensible defaults: an enlisted soldier of unit 1/12/103/2,
/// valid from `now − 1 day` for a year, with base entry and the military discount.
pub fn credential(now: u64, index: u64) -> Credential {
    Credential {
        id: derive_id("credential", index),
        credential_type: CredentialType::MilitaryId,
        category: HolderCategory::Enlisted,
        subject: derive_id("subject", index),
        sponsor: None,
        not_before: now.saturating_sub(86_400),
        not_after: now + 365 * 86_400,
        leave: None,
        unit: UnitPath::new(&[1, 12, 103, 2]).unwrap_or_default(),
        entitlements: Entitlements::BASE_ENTRY | Entitlements::MILITARY_DISCOUNT,
        birth_date: Date::new(2004, 3, 1).ok(),
        age_over_19: None,
        device_key: [2; 33],
    }
}

/// The issuer key of a synthetic world.
pub fn issuer_key(seed: u64) -> PrivateKey {
    derive_key("gatehouse synthetic issuer", seed)
}

/// A trust list holding one issuer key.
pub fn trust_list(issuer: &PrivateKey) -> TrustList {
    let mut t = TrustList::new();
    t.insert(IssuerKey {
        name: "synthetic-issuer".into(),
        public: issuer.public().clone(),
        not_before: 0,
        not_after: u64::MAX,
        retired: false,
    });
    t
}

/// What the synthetic population intends for a holder (the expected verdict follows from it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Valid credential.
    Valid,
    /// Revoked (by credential, subject or sponsor).
    Revoked,
    /// Expired credential.
    Expired,
}

/// A synthetic fleet: an issuer, holders spread over units and categories, the revocations
/// that apply to them, and scanners.
pub struct Population {
    /// The issuer key.
    pub issuer: PrivateKey,
    /// Holders, index = holder number.
    pub holders: Vec<Holder>,
    /// What each holder is meant to be.
    pub status: Vec<Status>,
    /// Revocations (snapshot, epoch 1).
    pub revocations: RevocationList,
    /// Scanners: gates, welfare gates, partners, age-check counters.
    pub scanners: ScannerRegistry,
}

/// Shape of a synthetic population.
#[derive(Debug, Clone, Copy)]
pub struct PopulationSpec {
    /// Number of holders.
    pub holders: usize,
    /// Seed for every key and id.
    pub seed: u64,
    /// "Now" the validity dates are set around (Unix seconds).
    pub now: u64,
    /// Share revoked, in per mille.
    pub revoked_per_mille: u32,
    /// Share expired, in per mille.
    pub expired_per_mille: u32,
}

impl Default for PopulationSpec {
    fn default() -> Self {
        PopulationSpec {
            holders: 10_000,
            seed: 1,
            now: 1_800_000_000,
            revoked_per_mille: 30,
            expired_per_mille: 20,
        }
    }
}

/// Corps × divisions × brigades × battalions the population is spread over.
pub const UNITS: (u16, u16, u16, u16) = (3, 4, 3, 4);

fn pick(h: &[u8; 32], i: usize, n: u64) -> u64 {
    u64::from(u16::from_le_bytes([h[i], h[i + 1]])) % n
}

/// The credential of holder `i`, before the device key is set.
fn synthetic_credential(spec: &PopulationSpec, i: u64) -> (Credential, Status) {
    let h: [u8; 32] = Sha256::digest(
        [
            b"shape".as_slice(),
            &spec.seed.to_be_bytes(),
            &i.to_be_bytes(),
        ]
        .concat(),
    )
    .into();
    let mut c = credential(spec.now, spec.seed.wrapping_mul(1_000_003).wrapping_add(i));
    let unit = [
        1 + pick(&h, 0, u64::from(UNITS.0)) as u16,
        1 + pick(&h, 2, u64::from(UNITS.1)) as u16,
        1 + pick(&h, 4, u64::from(UNITS.2)) as u16,
        1 + pick(&h, 6, u64::from(UNITS.3)) as u16,
    ];
    c.unit = UnitPath::new(&unit).unwrap_or_default();
    // Mostly enlisted and officers; then families, reservists, civil servants and others.
    let roll = pick(&h, 8, 1000);
    let (t, cat) = match roll {
        0..=549 => (CredentialType::MilitaryId, HolderCategory::Enlisted),
        550..=629 => (CredentialType::LeavePass, HolderCategory::Enlisted),
        630..=709 => (CredentialType::MilitaryId, HolderCategory::Nco),
        710..=779 => (CredentialType::MilitaryId, HolderCategory::Officer),
        780..=819 => (CredentialType::MilitaryId, HolderCategory::CivilianEmployee),
        820..=869 => (CredentialType::FamilyMember, HolderCategory::Parent),
        870..=899 => (CredentialType::FamilyMember, HolderCategory::Spouse),
        900..=919 => (CredentialType::FamilyMember, HolderCategory::Child),
        920..=959 => (CredentialType::Reservist, HolderCategory::Reservist),
        960..=974 => (CredentialType::CadetCandidate, HolderCategory::Cadet),
        975..=989 => (CredentialType::CivilServantId, HolderCategory::CivilServant),
        _ => (
            CredentialType::MilitaryId,
            HolderCategory::LongServiceVeteran,
        ),
    };
    c.credential_type = t;
    c.category = cat;
    match cat {
        HolderCategory::Parent | HolderCategory::Spouse | HolderCategory::Child => {
            // The sponsor is the service member with the previous index.
            c.sponsor = Some(derive_id(
                "subject",
                spec.seed
                    .wrapping_mul(1_000_003)
                    .wrapping_add(i.saturating_sub(1)),
            ));
            c.entitlements = Entitlements::WELFARE_FACILITIES | Entitlements::MILITARY_DISCOUNT;
            if cat == HolderCategory::Child {
                c.birth_date = Date::new(2012, 5, 5).ok();
            }
        }
        HolderCategory::CivilServant => {
            c.entitlements = Entitlements::BASE_ENTRY;
            c.birth_date = None;
            c.age_over_19 = Some(true);
        }
        HolderCategory::CivilianEmployee => c.entitlements = Entitlements::BASE_ENTRY,
        HolderCategory::LongServiceVeteran => {
            c.entitlements = Entitlements::MILITARY_DISCOUNT;
            c.birth_date = Date::new(1970, 1, 1).ok();
        }
        _ => {}
    }
    if t == CredentialType::LeavePass {
        c.leave = Some((spec.now.saturating_sub(2 * 86_400), spec.now + 5 * 86_400));
    }
    let roll = pick(&h, 10, 1000) as u32;
    let status = if roll < spec.revoked_per_mille {
        Status::Revoked
    } else if roll < spec.revoked_per_mille + spec.expired_per_mille {
        c.not_before = spec.now.saturating_sub(400 * 86_400);
        c.not_after = spec.now.saturating_sub(86_400);
        if let Some((a, _)) = c.leave {
            c.leave = Some((a.min(c.not_after - 1).max(c.not_before), c.not_after));
        }
        Status::Expired
    } else {
        Status::Valid
    };
    (c, status)
}

impl Population {
    /// Generates a population on the current rayon pool (every core). `progress` is called
    /// from worker threads with the number of holders just finished.
    pub fn generate(
        spec: &PopulationSpec,
        progress: &(dyn Fn(usize) + Sync),
    ) -> Result<Population, SignError> {
        let issuer = issuer_key(spec.seed);
        let made: Vec<Result<(Holder, Status), SignError>> = (0..spec.holders as u64)
            .into_par_iter()
            .map(|i| {
                let (c, status) = synthetic_credential(spec, i);
                let device = derive_key(
                    "gatehouse synthetic device",
                    spec.seed.wrapping_mul(1_000_003).wrapping_add(i),
                );
                let h = Holder::issue(&issuer, device, c)?;
                progress(1);
                Ok((h, status))
            })
            .collect();
        let mut holders = Vec::with_capacity(made.len());
        let mut status = Vec::with_capacity(made.len());
        for m in made {
            let (h, s) = m?;
            holders.push(h);
            status.push(s);
        }
        let revoke = holders
            .iter()
            .zip(&status)
            .enumerate()
            .filter(|(_, (_, s))| **s == Status::Revoked)
            .map(|(i, (h, _))| {
                // Alternate how a holder is revoked: credential, subject, or (family) sponsor.
                let c = &h.credential;
                match (i % 3, c.sponsor) {
                    (2, Some(sponsor)) => RevocationEntry {
                        kind: RevocationKind::Sponsor,
                        id: sponsor,
                    },
                    (1, _) => RevocationEntry {
                        kind: RevocationKind::Subject,
                        id: c.subject,
                    },
                    _ => RevocationEntry {
                        kind: RevocationKind::Credential,
                        id: c.id,
                    },
                }
            })
            .collect();
        let revocations = RevocationList {
            epoch: 1,
            base: None,
            revoke,
            reinstate: vec![],
            digest: None,
        };
        Ok(Population {
            issuer,
            holders,
            status,
            revocations,
            scanners: standard_scanners(),
        })
    }

    /// The trust list for this population's issuer.
    pub fn trust_list(&self) -> TrustList {
        trust_list(&self.issuer)
    }
}

/// Revoking a sponsor revokes every family member naming it, and revoking a subject revokes
/// every credential of it: the real status of each holder under `list`.
pub fn effective_revoked(holders: &[Holder], list: &RevocationList) -> Vec<bool> {
    use std::collections::HashSet;
    let set: HashSet<(RevocationKind, [u8; 16])> =
        list.revoke.iter().map(|e| (e.kind, e.id)).collect();
    holders
        .iter()
        .map(|h| {
            let c = &h.credential;
            set.contains(&(RevocationKind::Credential, c.id))
                || set.contains(&(RevocationKind::Subject, c.subject))
                || c.sponsor
                    .is_some_and(|s| set.contains(&(RevocationKind::Sponsor, s)))
        })
        .collect()
}

/// One gate per division (admitting the default types, and ISO mDLs), one welfare gate per
/// division (admitting family members), partners and age-check counters.
pub fn standard_scanners() -> ScannerRegistry {
    let mut r = ScannerRegistry::new();
    for corps in 1..=UNITS.0 {
        for div in 1..=UNITS.1 {
            let unit = UnitPath::new(&[corps, div]).unwrap_or_default();
            r.insert(Scanner {
                id: format!("gate-{corps}-{div}"),
                role: Role::Gate {
                    unit,
                    admits: DEFAULT_GATE_ADMITS.to_vec(),
                },
                // A division's gate also admits ISO mDLs (SPEC §12.4), for the demo's and the
                // harness's mdoc share.
                mdoc: gatehouse_core::MdocPolicy {
                    doc_types: vec![gatehouse_mdoc::MDL_DOCTYPE.to_string()],
                    ..Default::default()
                },
            });
            r.insert(Scanner {
                id: format!("welfare-{corps}-{div}"),
                role: Role::Gate {
                    unit,
                    admits: vec![CredentialType::FamilyMember],
                },
                mdoc: Default::default(),
            });
        }
    }
    for i in 1..=8 {
        r.insert(Scanner {
            id: format!("partner-{i}"),
            role: Role::Partner,
            mdoc: Default::default(),
        });
    }
    for i in 1..=4 {
        r.insert(Scanner {
            id: format!("age-{i}"),
            role: Role::AgeCheck,
            mdoc: Default::default(),
        });
    }
    r
}

/// What was done to a token, as far as its verdict is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presented {
    /// Signed now by the holder's device.
    Genuine,
    /// Signed by another key than the credential's device key.
    Forged,
    /// Not a token at all.
    Garbage,
    /// Signed by the device, with a timestamp outside the acceptance window.
    Stale,
}

/// The verdict a correct engine gives credential `c` (revoked or not) presented as `presented`
/// at a scanner of `role` at `now`, worked out from the credential's fields in the SPEC's
/// order (§6): format, dates, freshness, revocation, signatures, then the role's policy.
/// `gatehouse demo` and the load harness compare every verdict with it.
pub fn expected(
    c: &Credential,
    revoked: bool,
    role: &Role,
    presented: Presented,
    now: u64,
    utc_offset_secs: i32,
) -> gatehouse_protocol::Reason {
    use gatehouse_protocol::Reason;
    if presented == Presented::Garbage {
        return Reason::Malformed;
    }
    if let Err(r) = c.validity_at(now) {
        return r;
    }
    if presented == Presented::Stale {
        return Reason::Stale;
    }
    if revoked {
        return Reason::Revoked;
    }
    if presented == Presented::Forged {
        return Reason::BadDeviceSignature;
    }
    gatehouse_core::decide(role, c, now, utc_offset_secs).reason
}

/// The verdict for the same bytes shown again after the first showing got `first`: a token
/// that reached one-time use is a replay wherever it is shown again; one refused before it is
/// refused again for the same reason.
pub fn repeated(first: gatehouse_protocol::Reason) -> gatehouse_protocol::Reason {
    if reached_one_time_use(first) {
        gatehouse_protocol::Reason::Replayed
    } else {
        first
    }
}

/// Whether a token with this verdict passed every check up to one-time use.
pub fn reached_one_time_use(r: gatehouse_protocol::Reason) -> bool {
    use gatehouse_protocol::Reason;
    matches!(
        r,
        Reason::Accepted
            | Reason::NotAdmitted
            | Reason::NotEligible
            | Reason::AttributeMissing
            | Reason::ChallengeMismatch
            | Reason::Replayed
    )
}
