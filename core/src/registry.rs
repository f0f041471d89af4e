//! The trust list and the scanner registry: their types, and their parsing from TOML text
//! (the shell reads the files, see `server::files`). Every error names the file, the field
//! and the problem.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use gatehouse_protocol::{CredentialType, PublicKey, UnitPath};
use serde::Deserialize;

/// A configuration problem, located.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {field}: {problem}")]
pub struct ConfigError {
    /// The file (or `<inline>`).
    pub file: PathBuf,
    /// The field, as a path (`issuer[2].public_key`).
    pub field: String,
    /// What is wrong.
    pub problem: String,
}

impl ConfigError {
    /// A problem with `field` of `file`.
    pub fn new(file: &Path, field: impl Into<String>, problem: impl Into<String>) -> Self {
        ConfigError {
            file: file.to_path_buf(),
            field: field.into(),
            problem: problem.into(),
        }
    }
}

fn parse_toml<T: serde::de::DeserializeOwned>(file: &Path, text: &str) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| {
        // toml names the key and the line; keep its message, locate it by line.
        let line = e
            .span()
            .map(|s| {
                text.as_bytes()[..s.start.min(text.len())]
                    .iter()
                    .filter(|b| **b == b'\n')
                    .count()
                    + 1
            })
            .map(|l| format!("line {l}"))
            .unwrap_or_else(|| "(document)".into());
        ConfigError::new(file, line, e.message().to_string())
    })
}

/// One trusted issuer key.
#[derive(Debug, Clone)]
pub struct IssuerKey {
    /// A name for logs.
    pub name: String,
    /// The public key.
    pub public: PublicKey,
    /// Credentials whose validity starts before this are refused (the key did not exist).
    pub not_before: u64,
    /// After this instant the key is refused for every credential.
    pub not_after: u64,
    /// A retired key is refused outright (compromise, withdrawal).
    pub retired: bool,
}

/// A key trusted to sign revocation lists (SPEC §11.2). Kept apart from issuer keys: an issuer
/// key cannot sign revocations, nor a revocation key credentials.
#[derive(Debug, Clone)]
pub struct RevocationKey {
    /// A name for logs.
    pub name: String,
    /// The public key.
    pub public: PublicKey,
}

/// Trusted issuer keys and revocation keys, by key id.
#[derive(Debug, Clone, Default)]
pub struct TrustList {
    keys: HashMap<[u8; 8], IssuerKey>,
    revocation_keys: HashMap<[u8; 8], RevocationKey>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TrustFile {
    #[serde(default)]
    issuer: Vec<IssuerEntry>,
    #[serde(default)]
    revocation_key: Vec<RevocationKeyEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevocationKeyEntry {
    name: String,
    public_key: String,
}

fn parse_public(file: &Path, field: String, hex_text: &str) -> Result<PublicKey, ConfigError> {
    let bytes = hex::decode(hex_text.trim())
        .map_err(|err| ConfigError::new(file, field.clone(), format!("not hex: {err}")))?;
    PublicKey::from_sec1(&bytes)
        .map_err(|_| ConfigError::new(file, field, "not a P-256 public key (SEC1)"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IssuerEntry {
    name: String,
    public_key: String,
    #[serde(default)]
    not_before: u64,
    #[serde(default = "far_future")]
    not_after: u64,
    #[serde(default)]
    retired: bool,
}

fn far_future() -> u64 {
    u64::MAX
}

impl TrustList {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a key (replacing one with the same id).
    pub fn insert(&mut self, key: IssuerKey) {
        self.keys.insert(key.public.key_id(), key);
    }

    /// The key with this id.
    pub fn get(&self, kid: &[u8; 8]) -> Option<&IssuerKey> {
        self.keys.get(kid)
    }

    /// Adds a revocation key (replacing one with the same id).
    pub fn insert_revocation_key(&mut self, key: RevocationKey) {
        self.revocation_keys.insert(key.public.key_id(), key);
    }

    /// Removes the revocation keys named `name`; returns how many there were.
    pub fn remove_revocation_keys_named(&mut self, name: &str) -> usize {
        let before = self.revocation_keys.len();
        self.revocation_keys.retain(|_, k| k.name != name);
        before - self.revocation_keys.len()
    }

    /// Whether a revocation key is named `name`.
    pub fn has_revocation_key_named(&self, name: &str) -> bool {
        self.revocation_keys.values().any(|k| k.name == name)
    }

    /// The revocation key with this id.
    pub fn revocation_key(&self, kid: &[u8; 8]) -> Option<&RevocationKey> {
        self.revocation_keys.get(kid)
    }

    /// Number of revocation keys.
    pub fn revocation_keys(&self) -> usize {
        self.revocation_keys.len()
    }

    /// Number of issuer keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no issuer key is trusted.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Parses trust-list TOML; `file` only names the source in errors.
    pub fn parse(file: &Path, text: &str) -> Result<TrustList, ConfigError> {
        let f: TrustFile = parse_toml(file, text)?;
        let mut list = TrustList::new();
        for (i, e) in f.issuer.into_iter().enumerate() {
            let field = |name: &str| format!("issuer[{i}].{name}");
            let public = parse_public(file, field("public_key"), &e.public_key)?;
            if e.not_before >= e.not_after {
                return Err(ConfigError::new(
                    file,
                    field("not_after"),
                    "must be after not_before",
                ));
            }
            if list.get(&public.key_id()).is_some() {
                return Err(ConfigError::new(file, field("public_key"), "listed twice"));
            }
            list.insert(IssuerKey {
                name: e.name,
                public,
                not_before: e.not_before,
                not_after: e.not_after,
                retired: e.retired,
            });
        }
        for (i, e) in f.revocation_key.into_iter().enumerate() {
            let field = format!("revocation_key[{i}].public_key");
            let public = parse_public(file, field.clone(), &e.public_key)?;
            if list.revocation_key(&public.key_id()).is_some()
                || list.get(&public.key_id()).is_some()
            {
                return Err(ConfigError::new(
                    file,
                    field,
                    "listed twice (a revocation key must not also be an issuer key)",
                ));
            }
            list.insert_revocation_key(RevocationKey {
                name: e.name,
                public,
            });
        }
        Ok(list)
    }

    /// The TOML for this list (what `gatehouse issuer keygen` writes).
    pub fn to_toml(&self) -> String {
        let mut keys: Vec<&IssuerKey> = self.keys.values().collect();
        keys.sort_by(|a, b| a.name.cmp(&b.name));
        let mut s = String::from("# Trusted issuer keys. Public keys are SEC1 hex.\n");
        for k in keys {
            s.push_str(&format!(
                "\n[[issuer]]\nname = {:?}\npublic_key = \"{}\"\nnot_before = {}\n",
                k.name,
                hex::encode(k.public.compressed()),
                k.not_before
            ));
            if k.not_after != u64::MAX {
                s.push_str(&format!("not_after = {}\n", k.not_after));
            }
            if k.retired {
                s.push_str("retired = true\n");
            }
        }
        let mut rkeys: Vec<&RevocationKey> = self.revocation_keys.values().collect();
        rkeys.sort_by(|a, b| a.name.cmp(&b.name));
        for k in rkeys {
            s.push_str(&format!(
                "\n[[revocation_key]]\nname = {:?}\npublic_key = \"{}\"\n",
                k.name,
                hex::encode(k.public.compressed())
            ));
        }
        s
    }
}

/// What a scanner is for; decides the policy and what the verdict discloses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// A base gate.
    Gate {
        /// The gate's unit: it admits credentials whose unit path lies under it.
        unit: UnitPath,
        /// Credential types the gate admits.
        admits: Vec<CredentialType>,
    },
    /// A partner's point of sale: learns only "eligible for the military discount".
    Partner,
    /// An age-check counter: learns only "19 or older".
    AgeCheck,
}

impl Role {
    /// Stable name for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Role::Gate { .. } => "gate",
            Role::Partner => "partner",
            Role::AgeCheck => "age_check",
        }
    }

    /// Index for per-role counters.
    pub fn index(&self) -> usize {
        match self {
            Role::Gate { .. } => 0,
            Role::Partner => 1,
            Role::AgeCheck => 2,
        }
    }
}

/// Credential types a gate admits when its entry does not say.
pub const DEFAULT_GATE_ADMITS: &[CredentialType] = &[
    CredentialType::MilitaryId,
    CredentialType::LeavePass,
    CredentialType::BusinessTripPass,
    CredentialType::ServiceConfirmation,
    CredentialType::CadetCandidate,
    CredentialType::Reservist,
];

/// A registered scanner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scanner {
    /// Its id (the client certificate's common name).
    pub id: String,
    /// Its role.
    pub role: Role,
    /// What it accepts of ISO/IEC 18013-5 presentations (SPEC §12.4).
    pub mdoc: MdocPolicy,
}

/// A scanner's rules for mdoc presentations (SPEC §12.4), from its registry entry.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MdocPolicy {
    /// docTypes a gate admits (`mdoc_doc_types`); empty, the default: a gate admits no mdoc.
    pub doc_types: Vec<String>,
    /// Issuing authorities a gate admits, as the IACA's subject names them (`US`, `US-CA`:
    /// country, and state or province when named); empty: any IACA of the trust list.
    pub authorities: Vec<String>,
    /// Whether a response authenticated by a device MAC is accepted (`mdoc_device_mac`). Off by
    /// default: a MAC is symmetric, so whoever holds the session's reader key could make one.
    pub device_mac: bool,
}

/// Scanners by id.
#[derive(Debug, Clone, Default)]
pub struct ScannerRegistry {
    scanners: HashMap<String, std::sync::Arc<Scanner>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScannerFile {
    #[serde(default)]
    scanner: Vec<ScannerEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScannerEntry {
    id: String,
    role: String,
    unit: Option<String>,
    admits: Option<Vec<String>>,
    #[serde(default)]
    mdoc_doc_types: Vec<String>,
    #[serde(default)]
    mdoc_authorities: Vec<String>,
    #[serde(default)]
    mdoc_device_mac: bool,
}

impl ScannerRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a scanner (replacing one with the same id).
    pub fn insert(&mut self, s: Scanner) {
        self.scanners.insert(s.id.clone(), std::sync::Arc::new(s));
    }

    /// The scanner with this id.
    pub fn get(&self, id: &str) -> Option<std::sync::Arc<Scanner>> {
        self.scanners.get(id).cloned()
    }

    /// Number of scanners.
    pub fn len(&self) -> usize {
        self.scanners.len()
    }

    /// Whether no scanner is registered.
    pub fn is_empty(&self) -> bool {
        self.scanners.is_empty()
    }

    /// Every scanner, in id order.
    pub fn iter(&self) -> impl Iterator<Item = &Scanner> {
        let mut v: Vec<&Scanner> = self.scanners.values().map(|s| s.as_ref()).collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v.into_iter()
    }

    /// Parses registry TOML; `file` only names the source in errors.
    pub fn parse(file: &Path, text: &str) -> Result<ScannerRegistry, ConfigError> {
        let f: ScannerFile = parse_toml(file, text)?;
        let mut reg = ScannerRegistry::new();
        for (i, e) in f.scanner.into_iter().enumerate() {
            let field = |name: &str| format!("scanner[{i}].{name}");
            if e.id.is_empty() || e.id.len() > 128 {
                return Err(ConfigError::new(
                    file,
                    field("id"),
                    "must be 1 to 128 characters",
                ));
            }
            if reg.get(&e.id).is_some() {
                return Err(ConfigError::new(
                    file,
                    field("id"),
                    format!("{:?} is listed twice", e.id),
                ));
            }
            let role = match e.role.as_str() {
                "gate" => {
                    let unit = e
                        .unit
                        .as_deref()
                        .ok_or_else(|| {
                            ConfigError::new(
                                file,
                                field("unit"),
                                "a gate needs its unit path, e.g. \"1/12\"",
                            )
                        })?
                        .parse()
                        .map_err(|err| ConfigError::new(file, field("unit"), format!("{err}")))?;
                    let admits = match e.admits {
                        None => DEFAULT_GATE_ADMITS.to_vec(),
                        Some(list) => list
                            .iter()
                            .map(|l| {
                                CredentialType::from_label(l).ok_or_else(|| {
                                    ConfigError::new(
                                        file,
                                        field("admits"),
                                        format!("unknown credential type {l:?}"),
                                    )
                                })
                            })
                            .collect::<Result<_, _>>()?,
                    };
                    Role::Gate { unit, admits }
                }
                "partner" | "age_check" => {
                    if e.unit.is_some() || e.admits.is_some() {
                        return Err(ConfigError::new(
                            file,
                            field("role"),
                            "only gates take unit and admits",
                        ));
                    }
                    if e.role == "partner" {
                        Role::Partner
                    } else {
                        Role::AgeCheck
                    }
                }
                other => {
                    return Err(ConfigError::new(
                        file,
                        field("role"),
                        format!("unknown role {other:?} (gate, partner, age_check)"),
                    ))
                }
            };
            if !matches!(role, Role::Gate { .. })
                && (!e.mdoc_doc_types.is_empty() || !e.mdoc_authorities.is_empty())
            {
                return Err(ConfigError::new(
                    file,
                    field("mdoc_doc_types"),
                    "only gates take mdoc_doc_types and mdoc_authorities",
                ));
            }
            reg.insert(Scanner {
                id: e.id,
                role,
                mdoc: MdocPolicy {
                    doc_types: e.mdoc_doc_types,
                    authorities: e.mdoc_authorities,
                    device_mac: e.mdoc_device_mac,
                },
            });
        }
        Ok(reg)
    }

    /// The TOML for this registry.
    pub fn to_toml(&self) -> String {
        let mut s =
            String::from("# Registered scanners. id = the client certificate's common name.\n");
        for sc in self.iter() {
            s.push_str(&format!(
                "\n[[scanner]]\nid = {:?}\nrole = \"{}\"\n",
                sc.id,
                sc.role.label()
            ));
            if let Role::Gate { unit, admits } = &sc.role {
                let list: Vec<String> = admits
                    .iter()
                    .map(|t| format!("\"{}\"", t.label()))
                    .collect();
                s.push_str(&format!(
                    "unit = \"{unit}\"\nadmits = [{}]\n",
                    list.join(", ")
                ));
            }
            let quoted = |v: &[String]| {
                v.iter()
                    .map(|t| format!("{t:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            if !sc.mdoc.doc_types.is_empty() {
                s.push_str(&format!(
                    "mdoc_doc_types = [{}]\n",
                    quoted(&sc.mdoc.doc_types)
                ));
            }
            if !sc.mdoc.authorities.is_empty() {
                s.push_str(&format!(
                    "mdoc_authorities = [{}]\n",
                    quoted(&sc.mdoc.authorities)
                ));
            }
            if sc.mdoc.device_mac {
                s.push_str("mdoc_device_mac = true\n");
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mdoc_rules_parse_round_trip_and_are_refused_where_they_mean_nothing() {
        let text = r#"
[[scanner]]
id = "desk"
role = "gate"
unit = "9"
mdoc_doc_types = ["org.iso.18013.5.1.mDL"]
mdoc_authorities = ["US-CA"]
mdoc_device_mac = true

[[scanner]]
id = "age"
role = "age_check"
"#;
        let file = Path::new("scanners.toml");
        let reg = ScannerRegistry::parse(file, text).unwrap_or_default();
        let desk = reg.get("desk").map(|s| s.mdoc.clone()).unwrap_or_default();
        assert_eq!(desk.doc_types, ["org.iso.18013.5.1.mDL"]);
        assert_eq!(desk.authorities, ["US-CA"]);
        assert!(desk.device_mac);
        assert_eq!(
            reg.get("age").map(|s| s.mdoc.clone()),
            Some(MdocPolicy::default())
        );
        let again = ScannerRegistry::parse(file, &reg.to_toml()).unwrap_or_default();
        assert_eq!(again.get("desk"), reg.get("desk"));
        let wrong = "[[scanner]]\nid = \"p\"\nrole = \"partner\"\nmdoc_doc_types = [\"x\"]\n";
        let e = ScannerRegistry::parse(file, wrong)
            .err()
            .map(|e| e.to_string());
        assert!(e.is_some_and(|e| e.contains("only gates take mdoc_doc_types")));
    }

    #[test]
    fn registry_errors_name_file_field_and_problem() {
        let f = Path::new("scanners.toml");
        let e =
            ScannerRegistry::parse(f, "[[scanner]]\nid = \"g1\"\nrole = \"gate\"\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "scanners.toml: scanner[0].unit: a gate needs its unit path, e.g. \"1/12\""
        );
        let e = ScannerRegistry::parse(
            f,
            "[[scanner]]\nid = \"g1\"\nrole = \"gate\"\nunit = \"1\"\nadmits = [\"tank\"]\n",
        )
        .unwrap_err();
        assert_eq!(e.field, "scanner[0].admits");
        let e =
            ScannerRegistry::parse(f, "[[scanner]]\nid = \"p\"\nrole = \"shop\"\n").unwrap_err();
        assert!(e.problem.contains("unknown role"));
        let e = ScannerRegistry::parse(
            f,
            "[[scanner]]\nid = \"p\"\nrole = \"partner\"\ncolour = 1\n",
        )
        .unwrap_err();
        assert_eq!(e.field, "line 4");
        assert!(e.problem.contains("colour"), "{e}");
    }

    #[test]
    fn registry_round_trips_through_toml() {
        let mut r = ScannerRegistry::new();
        r.insert(Scanner {
            id: "g".into(),
            role: Role::Gate {
                unit: "1/12".parse().unwrap(),
                admits: vec![CredentialType::FamilyMember],
            },
            mdoc: Default::default(),
        });
        r.insert(Scanner {
            id: "p".into(),
            role: Role::Partner,
            mdoc: Default::default(),
        });
        r.insert(Scanner {
            id: "a".into(),
            role: Role::AgeCheck,
            mdoc: Default::default(),
        });
        let back = ScannerRegistry::parse(Path::new("x"), &r.to_toml()).unwrap();
        assert_eq!(
            back.iter().cloned().collect::<Vec<_>>(),
            r.iter().cloned().collect::<Vec<_>>()
        );
    }

    #[test]
    fn trust_list_validates_keys() {
        let f = Path::new("trust.toml");
        let e = TrustList::parse(f, "[[issuer]]\nname = \"a\"\npublic_key = \"zz\"\n").unwrap_err();
        assert_eq!(e.field, "issuer[0].public_key");
        let e =
            TrustList::parse(f, "[[issuer]]\nname = \"a\"\npublic_key = \"02ff\"\n").unwrap_err();
        assert!(e.problem.contains("P-256"));
        let k = gatehouse_protocol::PrivateKey::from_bytes(&[5; 32]).unwrap();
        let mut t = TrustList::new();
        t.insert(IssuerKey {
            name: "army".into(),
            public: k.public().clone(),
            not_before: 10,
            not_after: 20,
            retired: true,
        });
        let r = gatehouse_protocol::PrivateKey::from_bytes(&[6; 32]).unwrap();
        t.insert_revocation_key(RevocationKey {
            name: "revocations".into(),
            public: r.public().clone(),
        });
        let back = TrustList::parse(f, &t.to_toml()).unwrap();
        let got = back.get(&k.public().key_id()).unwrap();
        assert_eq!((got.not_before, got.not_after, got.retired), (10, 20, true));
        // The revocation key is found as one, and is not an issuer key.
        assert!(back.revocation_key(&r.public().key_id()).is_some());
        assert!(back.get(&r.public().key_id()).is_none());
        assert!(back.revocation_key(&k.public().key_id()).is_none());
        let twice = format!(
            "{}\n[[revocation_key]]\nname = \"x\"\npublic_key = \"{}\"\n",
            t.to_toml(),
            hex::encode(k.public().compressed())
        );
        let e = TrustList::parse(f, &twice).unwrap_err();
        assert_eq!(e.field, "revocation_key[1].public_key");
    }
}
