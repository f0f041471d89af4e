//! The issuer and wallet tools behind `gatehouse issuer …` and `gatehouse wallet …`: key files,
//! issuing credentials, revocation epochs, rotating tokens as QR codes. For development and
//! tests: a real issuer keeps its key in an HSM, a real wallet in the phone's secure area.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use gatehouse_protocol::{
    to_qr_text, Credential, CredentialType, Date, Entitlements, HolderCategory, Presentation,
    PrivateKey, RevocationEntry, RevocationKind, RevocationList, UnitPath,
};

use gatehouse_engine::{IssuerKey, TrustList};

/// Writes a private key as hex, readable by the owner only.
pub fn write_key(path: &Path, key: &PrivateKey) -> Result<()> {
    std::fs::write(path, format!("{}\n", hex::encode(key.to_bytes())))
        .with_context(|| format!("writing {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("restricting {}", path.display()))?;
    }
    Ok(())
}

/// Reads a hex private-key file.
pub fn read_key(path: &Path) -> Result<PrivateKey> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let bytes = hex::decode(text.trim()).with_context(|| format!("{}: not hex", path.display()))?;
    let arr: [u8; 32] = bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("{}: a key is 32 bytes", path.display()))?;
    PrivateKey::from_bytes(&arr).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    use rand_core::{OsRng, RngCore};
    let mut b = [0u8; N];
    OsRng
        .try_fill_bytes(&mut b)
        .context("reading the system's random source")?;
    Ok(b)
}

/// A fresh random private key.
pub fn generate_key() -> Result<PrivateKey> {
    loop {
        if let Ok(k) = PrivateKey::from_bytes(&random_bytes::<32>()?) {
            return Ok(k);
        }
    }
}

/// `issuer keygen`: a new issuer key in `dir/issuer.key` and a trust list naming it in
/// `dir/trust.toml`.
pub fn issuer_keygen(dir: &Path, name: &str, now: u64) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let key = generate_key()?;
    let key_path = dir.join("issuer.key");
    write_key(&key_path, &key)?;
    let mut trust = TrustList::new();
    trust.insert(IssuerKey {
        name: name.into(),
        public: key.public().clone(),
        not_before: now.saturating_sub(86_400),
        not_after: u64::MAX,
        retired: false,
    });
    std::fs::write(dir.join("trust.toml"), trust.to_toml()).context("writing trust.toml")?;
    Ok(key_path)
}

/// What `issuer issue` puts in a credential.
#[derive(Debug, Clone)]
pub struct IssueRequest {
    /// Credential type label (e.g. `military_id`).
    pub credential_type: String,
    /// Holder category label (e.g. `enlisted`).
    pub category: String,
    /// Unit path (e.g. `1/12/103/2`).
    pub unit: String,
    /// Validity in days from now.
    pub days: u64,
    /// Birth date `YYYYMMDD`.
    pub birth: Option<u32>,
    /// Sponsor subject id (hex) for family members.
    pub sponsor: Option<String>,
    /// Entitlement labels: `base_entry`, `military_discount`, `welfare_facilities`.
    pub entitlements: Vec<String>,
}

/// `issuer issue`: a credential for a new holder; writes `dir/credential.cose` and the
/// holder's `dir/device.key`; returns the credential.
pub fn issuer_issue(
    issuer_key: &Path,
    dir: &Path,
    req: &IssueRequest,
    now: u64,
) -> Result<Credential> {
    let issuer = read_key(issuer_key)?;
    let credential_type = CredentialType::from_label(&req.credential_type)
        .with_context(|| format!("unknown credential type {:?}", req.credential_type))?;
    let category = HolderCategory::from_label(&req.category)
        .with_context(|| format!("unknown holder category {:?}", req.category))?;
    let unit: UnitPath = req
        .unit
        .parse()
        .map_err(|e| anyhow::anyhow!("unit {:?}: {e}", req.unit))?;
    let mut entitlements = Entitlements::NONE;
    for e in &req.entitlements {
        entitlements = entitlements
            | match e.as_str() {
                "base_entry" => Entitlements::BASE_ENTRY,
                "military_discount" => Entitlements::MILITARY_DISCOUNT,
                "welfare_facilities" => Entitlements::WELFARE_FACILITIES,
                other => bail!(
                "unknown entitlement {other:?} (base_entry, military_discount, welfare_facilities)"
            ),
            };
    }
    let sponsor = match &req.sponsor {
        None => None,
        Some(h) => Some(
            hex::decode(h)
                .ok()
                .and_then(|b| <[u8; 16]>::try_from(b).ok())
                .context("sponsor: 16 bytes of hex")?,
        ),
    };
    let device = generate_key()?;
    let not_after = now + req.days.max(1) * 86_400;
    let credential = Credential {
        id: random_bytes()?,
        credential_type,
        category,
        subject: random_bytes()?,
        sponsor,
        not_before: now.saturating_sub(60),
        not_after,
        leave: (credential_type == CredentialType::LeavePass)
            .then_some((now.saturating_sub(60), not_after)),
        unit,
        entitlements,
        birth_date: req
            .birth
            .map(|b| Date::from_yyyymmdd(u64::from(b)))
            .transpose()
            .map_err(|e| anyhow::anyhow!("birth: {e}"))?,
        age_over_19: None,
        device_key: *device.public().compressed(),
    };
    let bytes = credential
        .issue(&issuer)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(dir.join("credential.cose"), &bytes).context("writing credential.cose")?;
    write_key(&dir.join("device.key"), &device)?;
    Ok(credential)
}

/// `issuer revoke`: a revocation list (snapshot without `base`, delta with it).
pub fn issuer_revoke(
    out: &Path,
    epoch: u64,
    base: Option<u64>,
    ids: &[(RevocationKind, String)],
) -> Result<RevocationList> {
    let mut revoke = Vec::new();
    for (kind, h) in ids {
        let id = hex::decode(h)
            .ok()
            .and_then(|b| <[u8; 16]>::try_from(b).ok())
            .with_context(|| format!("{h:?}: an id is 16 bytes of hex"))?;
        revoke.push(RevocationEntry { kind: *kind, id });
    }
    let list = RevocationList {
        epoch,
        base,
        revoke,
        reinstate: vec![],
    };
    list.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
    std::fs::write(out, list.encode()).with_context(|| format!("writing {}", out.display()))?;
    Ok(list)
}

/// `wallet present`: a fresh token from `dir/credential.cose` and `dir/device.key`.
pub fn wallet_present(dir: &Path, now: u64, challenge: Option<&[u8]>) -> Result<Vec<u8>> {
    let credential =
        std::fs::read(dir.join("credential.cose")).context("reading credential.cose")?;
    let device = read_key(&dir.join("device.key"))?;
    Presentation {
        credential: &credential,
        timestamp: now,
        nonce: random_bytes()?,
        challenge,
    }
    .sign(&device)
    .map_err(|e| anyhow::anyhow!("{e}"))
}

/// The QR text of a token rendered for a terminal (two rows of modules per line), and as SVG.
pub fn qr_renderings(token: &[u8]) -> Result<(String, String, String)> {
    use qrcode::render::{svg, unicode};
    use qrcode::{EcLevel, QrCode};
    let text = to_qr_text(token);
    let code = QrCode::with_error_correction_level(text.as_bytes(), EcLevel::L)
        .context("the token does not fit a QR code")?;
    let term = code.render::<unicode::Dense1x2>().quiet_zone(true).build();
    let svg = code
        .render::<svg::Color<'_>>()
        .min_dimensions(400, 400)
        .build();
    Ok((text, term, svg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue_present_and_revoke_through_files() {
        let dir = std::env::temp_dir().join(format!("gatehouse-tools-{}", std::process::id()));
        let now = 1_800_000_000;
        let key = issuer_keygen(&dir, "test-issuer", now).unwrap();
        let trust =
            gatehouse_engine::server::files::load_trust_list(&dir.join("trust.toml")).unwrap();
        assert_eq!(trust.len(), 1);
        let req = IssueRequest {
            credential_type: "leave_pass".into(),
            category: "enlisted".into(),
            unit: "1/12".into(),
            days: 3,
            birth: Some(20040301),
            sponsor: None,
            entitlements: vec!["base_entry".into()],
        };
        let c = issuer_issue(&key, &dir.join("holder"), &req, now).unwrap();
        assert!(c.leave.is_some());
        let token = wallet_present(&dir.join("holder"), now, None).unwrap();
        let t = gatehouse_protocol::Token::decode(&token).unwrap();
        assert_eq!(t.credential.credential, c);
        let (text, term, svg) = qr_renderings(&token).unwrap();
        assert_eq!(gatehouse_protocol::from_qr_text(&text).unwrap(), token);
        assert!(term.lines().count() > 20 && svg.contains("<svg"));
        let list = issuer_revoke(
            &dir.join("rev.cbor"),
            1,
            None,
            &[(RevocationKind::Credential, hex::encode(c.id))],
        )
        .unwrap();
        assert_eq!(
            gatehouse_engine::server::files::load_revocations(&dir.join("rev.cbor")).unwrap(),
            list
        );
        assert!(issuer_issue(
            &key,
            &dir.join("x"),
            &IssueRequest {
                unit: "a/b".into(),
                ..req
            },
            now
        )
        .is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
