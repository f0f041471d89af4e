//! The structures a reader forwards, decoded in the mdoc profile ([`crate::cbor`]): the
//! `DeviceResponse` (ISO/IEC 18013-5 §8.3.2.1.2.2) with its document's `IssuerSigned` and
//! `DeviceSigned`, and the `MobileSecurityObject` inside the issuer's signature (§9.1.2.4).
//!
//! Decoding keeps, for everything later hashed or signed, the exact bytes received: each
//! `IssuerSignedItemBytes`, `DeviceNameSpacesBytes`, the COSE protected headers and the MSO's
//! payload. Nothing is re-encoded.

use crate::cbor::{self, CborError, Node, Value};
use crate::time;

/// Most bytes of a DeviceResponse gatehouse reads (a portrait is a few tens of kilobytes).
pub const MAX_DEVICE_RESPONSE: usize = gatehouse_protocol::MAX_MDOC_RESPONSE;
/// Most bytes of a SessionTranscript.
pub const MAX_SESSION_TRANSCRIPT: usize = gatehouse_protocol::MAX_SESSION_TRANSCRIPT;
/// Most certificates in an `x5chain`.
pub const MAX_X5CHAIN: usize = 4;

/// The namespace of the mDL's data elements (ISO/IEC 18013-5 §7.2.1).
pub const MDL_NAMESPACE: &str = "org.iso.18013.5.1";
/// The mDL's document type.
pub const MDL_DOCTYPE: &str = "org.iso.18013.5.1.mDL";

/// Why a DeviceResponse, MSO or SessionTranscript does not decode.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Not CBOR of the mdoc profile (`what` names the structure).
    #[error("{what}: {source}")]
    Cbor {
        /// The structure being read.
        what: &'static str,
        /// What is wrong with its bytes.
        source: CborError,
    },
    /// A required field is missing or of the wrong type.
    #[error("{0} is missing or not of its type")]
    Field(&'static str),
    /// Longer than the profile reads.
    #[error("{what} is {len} bytes, more than {max}")]
    TooLong {
        /// The structure.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// The DeviceResponse reports an error status, or holds no document or more than one.
    #[error("the DeviceResponse has status {status} and {documents} documents: gatehouse judges one document with status 0")]
    NotOneDocument {
        /// Its `status`.
        status: u64,
        /// How many documents it holds.
        documents: usize,
    },
    /// A version this profile does not read.
    #[error("{what} version {version:?} is not 1.x")]
    Version {
        /// The structure.
        what: &'static str,
        /// The version text.
        version: String,
    },
}

fn cbor<'a>(what: &'static str, bytes: &'a [u8]) -> Result<Node<'a>, DecodeError> {
    cbor::decode(bytes).map_err(|source| DecodeError::Cbor { what, source })
}

fn text<'a>(n: &Node<'a>, key: &str, field: &'static str) -> Result<&'a str, DecodeError> {
    n.get(key)
        .and_then(Node::text)
        .ok_or(DecodeError::Field(field))
}

/// The embedded item of a `#6.24(bstr)`: the byte string's content, decoded.
fn embedded<'a>(n: &Node<'a>, what: &'static str) -> Result<Node<'a>, DecodeError> {
    let inner = n.embedded().ok_or(DecodeError::Field(what))?;
    cbor(what, inner)
}

/// A COSE_Sign1 (RFC 9052 §4.2), tagged (18) or not.
#[derive(Debug, Clone)]
pub struct Sign1<'a> {
    /// The protected header's bytes (the bstr's content), as signed.
    pub protected: &'a [u8],
    /// `alg` (label 1) from the protected header.
    pub alg: i64,
    /// `x5chain` (label 33): certificates, the signer's first; empty when absent.
    pub x5chain: Vec<&'a [u8]>,
    /// The payload, or `None` when detached (`nil`).
    pub payload: Option<&'a [u8]>,
    /// The signature.
    pub signature: &'a [u8],
}

/// A COSE_Mac0 (RFC 9052 §6.2), tagged (17) or not.
#[derive(Debug, Clone)]
pub struct Mac0<'a> {
    /// The protected header's bytes, as authenticated.
    pub protected: &'a [u8],
    /// `alg` from the protected header.
    pub alg: i64,
    /// The tag.
    pub tag: &'a [u8],
}

fn cose_common<'a, 'n>(
    n: &'n Node<'a>,
    tag: u64,
    what: &'static str,
) -> Result<(&'a [u8], i64, &'n [Node<'a>]), DecodeError> {
    let a = n.untag(tag).array().ok_or(DecodeError::Field(what))?;
    if a.len() != 4 {
        return Err(DecodeError::Field(what));
    }
    let protected = a[0].bytes().ok_or(DecodeError::Field(what))?;
    let header = if protected.is_empty() {
        None
    } else {
        Some(cbor(what, protected)?)
    };
    let alg = header
        .as_ref()
        .and_then(|h| h.get_int(1))
        .and_then(Node::int)
        .ok_or(DecodeError::Field("alg in the protected header"))?;
    if a[1].map().is_none() {
        return Err(DecodeError::Field(what));
    }
    Ok((protected, alg, a))
}

impl<'a> Sign1<'a> {
    fn decode(n: &Node<'a>, what: &'static str) -> Result<Self, DecodeError> {
        let (protected, alg, a) = cose_common(n, 18, what)?;
        // x5chain may be in either header (RFC 9360); ISO puts it in the unprotected one.
        let chain = cbor::decode(protected)
            .ok()
            .and_then(|h| h.get_int(33).map(|c| x5chain(c)))
            .or_else(|| a[1].get_int(33).map(x5chain))
            .transpose()?
            .unwrap_or_default();
        let payload = match &a[2].value {
            Value::Null => None,
            Value::Bytes(b) => Some(*b),
            _ => return Err(DecodeError::Field(what)),
        };
        let signature = a[3].bytes().ok_or(DecodeError::Field(what))?;
        Ok(Sign1 {
            protected,
            alg,
            x5chain: chain,
            payload,
            signature,
        })
    }

    /// The COSE `Sig_structure` for this signature over `payload` (RFC 9052 §4.4), with an
    /// empty external_aad.
    pub fn to_be_signed(&self, payload: &[u8]) -> Vec<u8> {
        structure(b"Signature1", self.protected, payload)
    }
}

fn x5chain<'a>(n: &Node<'a>) -> Result<Vec<&'a [u8]>, DecodeError> {
    match &n.value {
        Value::Bytes(b) => Ok(vec![*b]),
        Value::Array(items) if !items.is_empty() && items.len() <= MAX_X5CHAIN => items
            .iter()
            .map(|c| c.bytes().ok_or(DecodeError::Field("x5chain")))
            .collect(),
        _ => Err(DecodeError::Field("x5chain")),
    }
}

impl<'a> Mac0<'a> {
    fn decode(n: &Node<'a>) -> Result<Self, DecodeError> {
        let (protected, alg, a) = cose_common(n, 17, "deviceMac")?;
        if !matches!(a[2].value, Value::Null) {
            return Err(DecodeError::Field("deviceMac payload (must be detached)"));
        }
        let tag = a[3].bytes().ok_or(DecodeError::Field("deviceMac"))?;
        Ok(Mac0 {
            protected,
            alg,
            tag,
        })
    }

    /// The COSE `MAC_structure` for this tag over `payload` (RFC 9052 §6.3).
    pub fn to_be_maced(&self, payload: &[u8]) -> Vec<u8> {
        structure(b"MAC0", self.protected, payload)
    }
}

/// `[context, protected, h'', payload]`, each a definite-length string.
fn structure(context: &[u8], protected: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + context.len() + protected.len() + payload.len());
    out.push(0x84);
    head(&mut out, 3, context.len() as u64);
    out.extend_from_slice(context);
    head(&mut out, 2, protected.len() as u64);
    out.extend_from_slice(protected);
    out.push(0x40);
    head(&mut out, 2, payload.len() as u64);
    out.extend_from_slice(payload);
    out
}

/// A CBOR head of major type `major` and argument `n`, in its shortest form.
pub fn head(out: &mut Vec<u8>, major: u8, n: u64) {
    let m = major << 5;
    if n < 24 {
        out.push(m | n as u8);
    } else if n <= 0xff {
        out.extend_from_slice(&[m | 24, n as u8]);
    } else if n <= 0xffff {
        out.push(m | 25);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else if n <= 0xffff_ffff {
        out.push(m | 26);
        out.extend_from_slice(&(n as u32).to_be_bytes());
    } else {
        out.push(m | 27);
        out.extend_from_slice(&n.to_be_bytes());
    }
}

/// One disclosed data element: `IssuerSignedItemBytes`.
#[derive(Debug, Clone)]
pub struct IssuerSignedItem<'a> {
    /// The whole `#6.24(bstr)` as received: what its digest is computed over.
    pub raw: &'a [u8],
    /// `digestID`.
    pub digest_id: u64,
    /// `elementIdentifier`.
    pub identifier: &'a str,
    /// `elementValue`.
    pub value: Node<'a>,
}

/// How the device authenticated the response.
#[derive(Debug, Clone)]
pub enum DeviceAuth<'a> {
    /// `deviceSignature`: a COSE_Sign1 with a detached payload.
    Signature(Sign1<'a>),
    /// `deviceMac`: a COSE_Mac0 with a detached payload.
    Mac(Mac0<'a>),
}

/// The one document of a DeviceResponse.
#[derive(Debug, Clone)]
pub struct Document<'a> {
    /// `docType`.
    pub doc_type: &'a str,
    /// `issuerSigned.nameSpaces`: the disclosed elements by namespace.
    pub name_spaces: Vec<(&'a str, Vec<IssuerSignedItem<'a>>)>,
    /// `issuerSigned.issuerAuth`.
    pub issuer_auth: Sign1<'a>,
    /// `issuerAuth` as received: the issuer cache's key is its SHA-256.
    pub issuer_auth_raw: &'a [u8],
    /// `deviceSigned.nameSpaces` as received (`DeviceNameSpacesBytes`, tag 24 included).
    pub device_name_spaces: &'a [u8],
    /// `deviceSigned.deviceAuth`.
    pub device_auth: DeviceAuth<'a>,
}

impl<'a> Document<'a> {
    /// The issuer-signed element `identifier` of namespace `ns`, if disclosed.
    pub fn element(&self, ns: &str, identifier: &str) -> Option<&IssuerSignedItem<'a>> {
        self.name_spaces
            .iter()
            .filter(|(n, _)| *n == ns)
            .flat_map(|(_, items)| items)
            .find(|i| i.identifier == identifier)
    }
}

/// A DeviceResponse with exactly one document and status 0.
#[derive(Debug, Clone)]
pub struct DeviceResponse<'a> {
    /// The document.
    pub document: Document<'a>,
}

/// Decodes a DeviceResponse (at most [`MAX_DEVICE_RESPONSE`] bytes).
pub fn decode_device_response(bytes: &[u8]) -> Result<DeviceResponse<'_>, DecodeError> {
    if bytes.len() > MAX_DEVICE_RESPONSE {
        return Err(DecodeError::TooLong {
            what: "DeviceResponse",
            len: bytes.len(),
            max: MAX_DEVICE_RESPONSE,
        });
    }
    let root = cbor("DeviceResponse", bytes)?;
    version(
        text(&root, "version", "DeviceResponse version")?,
        "DeviceResponse",
    )?;
    let status = root
        .get("status")
        .and_then(Node::uint)
        .ok_or(DecodeError::Field("DeviceResponse status"))?;
    let documents = match root.get("documents") {
        None => &[][..],
        Some(d) => d.array().ok_or(DecodeError::Field("documents"))?,
    };
    match documents {
        [one] if status == 0 => Ok(DeviceResponse {
            document: document(one)?,
        }),
        _ => Err(DecodeError::NotOneDocument {
            status,
            documents: documents.len(),
        }),
    }
}

fn version(v: &str, what: &'static str) -> Result<(), DecodeError> {
    if v == "1.0"
        || v.strip_prefix("1.")
            .is_some_and(|m| m.bytes().all(|c| c.is_ascii_digit()) && !m.is_empty())
    {
        Ok(())
    } else {
        Err(DecodeError::Version {
            what,
            version: v.chars().take(16).collect(),
        })
    }
}

fn document<'a>(n: &Node<'a>) -> Result<Document<'a>, DecodeError> {
    let doc_type = text(n, "docType", "docType")?;
    let issuer_signed = n
        .get("issuerSigned")
        .ok_or(DecodeError::Field("issuerSigned"))?;
    let auth_node = issuer_signed
        .get("issuerAuth")
        .ok_or(DecodeError::Field("issuerAuth"))?;
    let issuer_auth = Sign1::decode(auth_node, "issuerAuth")?;
    let mut name_spaces = Vec::new();
    if let Some(ns) = issuer_signed.get("nameSpaces") {
        for (k, v) in ns
            .map()
            .ok_or(DecodeError::Field("issuerSigned nameSpaces"))?
        {
            let name = k.text().ok_or(DecodeError::Field("namespace name"))?;
            let items = v.array().ok_or(DecodeError::Field("IssuerSignedItems"))?;
            let items = items
                .iter()
                .map(issuer_signed_item)
                .collect::<Result<Vec<_>, _>>()?;
            name_spaces.push((name, items));
        }
    }
    let device_signed = n
        .get("deviceSigned")
        .ok_or(DecodeError::Field("deviceSigned"))?;
    let dns = device_signed
        .get("nameSpaces")
        .ok_or(DecodeError::Field("deviceSigned nameSpaces"))?;
    // DeviceNameSpacesBytes must hold a map; its elements are the device's own claims, which
    // gatehouse does not use, but the bytes are signed and must be what they say they are.
    if embedded(dns, "DeviceNameSpaces")?.map().is_none() {
        return Err(DecodeError::Field("DeviceNameSpaces"));
    }
    let auth = device_signed
        .get("deviceAuth")
        .ok_or(DecodeError::Field("deviceAuth"))?;
    let device_auth = match (auth.get("deviceSignature"), auth.get("deviceMac")) {
        (Some(s), None) => DeviceAuth::Signature(Sign1::decode(s, "deviceSignature")?),
        (None, Some(m)) => DeviceAuth::Mac(Mac0::decode(m)?),
        _ => {
            return Err(DecodeError::Field(
                "deviceAuth (one of deviceSignature, deviceMac)",
            ))
        }
    };
    Ok(Document {
        doc_type,
        name_spaces,
        issuer_auth,
        issuer_auth_raw: auth_node.raw,
        device_name_spaces: dns.raw,
        device_auth,
    })
}

fn issuer_signed_item<'a>(n: &Node<'a>) -> Result<IssuerSignedItem<'a>, DecodeError> {
    let item = embedded(n, "IssuerSignedItem")?;
    let digest_id = item
        .get("digestID")
        .and_then(Node::uint)
        .ok_or(DecodeError::Field("digestID"))?;
    item.get("random")
        .and_then(Node::bytes)
        .ok_or(DecodeError::Field("random"))?;
    let identifier = text(&item, "elementIdentifier", "elementIdentifier")?;
    let value = item
        .get("elementValue")
        .ok_or(DecodeError::Field("elementValue"))?
        .clone();
    Ok(IssuerSignedItem {
        raw: n.raw,
        digest_id,
        identifier,
        value,
    })
}

/// The digest algorithms of the MSO gatehouse computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigestAlgorithm {
    /// "SHA-256".
    Sha256,
    /// "SHA-384".
    Sha384,
    /// "SHA-512".
    Sha512,
}

impl DigestAlgorithm {
    /// The digest of `bytes`.
    pub fn digest(self, bytes: &[u8]) -> Vec<u8> {
        use sha2::Digest;
        match self {
            DigestAlgorithm::Sha256 => sha2::Sha256::digest(bytes).to_vec(),
            DigestAlgorithm::Sha384 => sha2::Sha384::digest(bytes).to_vec(),
            DigestAlgorithm::Sha512 => sha2::Sha512::digest(bytes).to_vec(),
        }
    }
}

/// The MobileSecurityObject: what the issuer signed.
#[derive(Debug, Clone)]
pub struct Mso {
    /// `digestAlgorithm`.
    pub digest_algorithm: DigestAlgorithm,
    /// `valueDigests`: (namespace, digestID, digest), sorted, for lookup.
    pub value_digests: Vec<(String, u64, Vec<u8>)>,
    /// `deviceKeyInfo.deviceKey` as a SEC1 point (65 bytes, or 33 with a compressed y).
    pub device_key: Vec<u8>,
    /// `docType`.
    pub doc_type: String,
    /// `validityInfo.signed`, Unix seconds.
    pub signed: i64,
    /// `validityInfo.validFrom`.
    pub valid_from: i64,
    /// `validityInfo.validUntil`.
    pub valid_until: i64,
}

impl Mso {
    /// The digest of `digest_id` in namespace `ns`.
    pub fn digest(&self, ns: &str, digest_id: u64) -> Option<&[u8]> {
        self.value_digests
            .binary_search_by(|(n, id, _)| (n.as_str(), *id).cmp(&(ns, digest_id)))
            .ok()
            .map(|i| self.value_digests[i].2.as_slice())
    }
}

/// Decodes the MSO from issuerAuth's payload (`MobileSecurityObjectBytes`, tag 24).
pub fn decode_mso(payload: &[u8]) -> Result<Mso, DecodeError> {
    let outer = cbor("MobileSecurityObjectBytes", payload)?;
    let mso = embedded(&outer, "MobileSecurityObject")?;
    version(text(&mso, "version", "MSO version")?, "MSO")?;
    let digest_algorithm = match text(&mso, "digestAlgorithm", "digestAlgorithm")? {
        "SHA-256" => DigestAlgorithm::Sha256,
        "SHA-384" => DigestAlgorithm::Sha384,
        "SHA-512" => DigestAlgorithm::Sha512,
        _ => {
            return Err(DecodeError::Field(
                "digestAlgorithm (SHA-256, SHA-384 or SHA-512)",
            ))
        }
    };
    let mut value_digests = Vec::new();
    for (ns, ids) in mso
        .get("valueDigests")
        .and_then(Node::map)
        .ok_or(DecodeError::Field("valueDigests"))?
    {
        let ns = ns
            .text()
            .ok_or(DecodeError::Field("valueDigests namespace"))?;
        for (id, d) in ids.map().ok_or(DecodeError::Field("DigestIDs"))? {
            let id = id.uint().ok_or(DecodeError::Field("DigestID"))?;
            let d = d.bytes().ok_or(DecodeError::Field("Digest"))?;
            value_digests.push((ns.to_owned(), id, d.to_vec()));
        }
    }
    value_digests.sort_by(|a, b| (a.0.as_str(), a.1).cmp(&(b.0.as_str(), b.1)));
    let key = mso
        .get("deviceKeyInfo")
        .and_then(|i| i.get("deviceKey"))
        .ok_or(DecodeError::Field("deviceKeyInfo.deviceKey"))?;
    let device_key = cose_key(key)?;
    let doc_type = text(&mso, "docType", "MSO docType")?.to_owned();
    let validity = mso
        .get("validityInfo")
        .ok_or(DecodeError::Field("validityInfo"))?;
    let date = |k: &str, f: &'static str| -> Result<i64, DecodeError> {
        validity.get(k).and_then(tdate).ok_or(DecodeError::Field(f))
    };
    Ok(Mso {
        digest_algorithm,
        value_digests,
        device_key,
        doc_type,
        signed: date("signed", "validityInfo.signed")?,
        valid_from: date("validFrom", "validityInfo.validFrom")?,
        valid_until: date("validUntil", "validityInfo.validUntil")?,
    })
}

/// A `tdate`: tag 0 around RFC 3339 text.
fn tdate(n: &Node<'_>) -> Option<i64> {
    match &n.value {
        Value::Tag(0, inner) => time::date_time(inner.text()?),
        _ => None,
    }
}

/// An EC2 P-256 COSE_Key (RFC 9053 §7.1.1) as a SEC1 point; any other key is refused.
fn cose_key(n: &Node<'_>) -> Result<Vec<u8>, DecodeError> {
    let kty = n.get_int(1).and_then(Node::int);
    let crv = n.get_int(-1).and_then(Node::int);
    if kty != Some(2) || crv != Some(1) {
        return Err(DecodeError::Field("deviceKey (an EC2 key on P-256)"));
    }
    let x = n
        .get_int(-2)
        .and_then(Node::bytes)
        .filter(|x| x.len() == 32)
        .ok_or(DecodeError::Field("deviceKey x"))?;
    let mut point = Vec::with_capacity(65);
    match n.get_int(-3).map(|y| &y.value) {
        Some(Value::Bytes(y)) if y.len() == 32 => {
            point.push(4);
            point.extend_from_slice(x);
            point.extend_from_slice(y);
        }
        Some(Value::Bool(odd)) => {
            point.push(if *odd { 3 } else { 2 });
            point.extend_from_slice(x);
        }
        _ => return Err(DecodeError::Field("deviceKey y")),
    }
    Ok(point)
}

/// Checks that `bytes` is one CBOR array (the SessionTranscript, at most
/// [`MAX_SESSION_TRANSCRIPT`] bytes) and returns `SessionTranscriptBytes` (tag 24 around it).
pub fn session_transcript_bytes(bytes: &[u8]) -> Result<Vec<u8>, DecodeError> {
    if bytes.len() > MAX_SESSION_TRANSCRIPT {
        return Err(DecodeError::TooLong {
            what: "SessionTranscript",
            len: bytes.len(),
            max: MAX_SESSION_TRANSCRIPT,
        });
    }
    let n = cbor("SessionTranscript", bytes)?;
    if n.array().is_none_or(|a| a.len() != 3) {
        return Err(DecodeError::Field("SessionTranscript (an array of three)"));
    }
    Ok(tag24(bytes))
}

/// `#6.24(bstr .cbor item)` around an item's bytes.
pub fn tag24(item: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(item.len() + 8);
    out.extend_from_slice(&[0xd8, 0x18]);
    head(&mut out, 2, item.len() as u64);
    out.extend_from_slice(item);
    out
}

/// `DeviceAuthenticationBytes` (§9.1.3.4): tag 24 around
/// `["DeviceAuthentication", SessionTranscript, DocType, DeviceNameSpacesBytes]`, built from
/// the bytes received (the transcript's and the name spaces' are copied, not re-encoded).
pub fn device_authentication_bytes(transcript: &[u8], doc_type: &str, dns: &[u8]) -> Vec<u8> {
    let mut inner = Vec::with_capacity(32 + transcript.len() + doc_type.len() + dns.len());
    inner.push(0x84);
    head(&mut inner, 3, 20);
    inner.extend_from_slice(b"DeviceAuthentication");
    inner.extend_from_slice(transcript);
    head(&mut inner, 3, doc_type.len() as u64);
    inner.extend_from_slice(doc_type.as_bytes());
    inner.extend_from_slice(dns);
    tag24(&inner)
}
