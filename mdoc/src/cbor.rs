//! The mdoc decoder profile of CBOR (RFC 8949), as ISO/IEC 18013-5 data uses it.
//!
//! gatehouse's own tokens are deterministic CBOR and their decoders refuse anything else
//! (SPEC §1.1). mdoc data is not: map keys are text in any order, heads need not be minimal,
//! COSE structures may be untagged, dates are tagged text, and signed structures are embedded
//! as byte strings under tag 24. This profile reads all of that, and keeps, for every item, the
//! exact bytes it came from ([`Node::raw`]): digests and signatures are computed over the bytes
//! as received, never over a re-encoding.
//!
//! It is bounded and total, like the token decoders: any input gives a tree or a typed
//! [`CborError`], never a panic. Limits, checked before anything is allocated:
//! - nesting depth at most [`MAX_DEPTH`];
//! - at most [`MAX_ITEMS`] items in one decode (every item takes at least one input byte, and a
//!   declared count is checked against the bytes left before its vector is allocated);
//! - strings borrow from the input (no copy); indefinite-length strings are refused (they would
//!   need one); indefinite-length arrays and maps are read;
//! - a map with two equal keys is refused (integers and strings compared by value, however
//!   their heads are encoded; anything else by its bytes): two readers must not be able to see
//!   two different values for one name.

/// Deepest nesting read (a DeviceResponse is about 10 deep, with tag-24 layers decoded apart).
pub const MAX_DEPTH: usize = 24;
/// Most items one decode reads.
pub const MAX_ITEMS: usize = 8192;
/// Items of an array or map allocated for before they are read.
const PREALLOCATE: usize = 16;

/// Why bytes are not CBOR of the mdoc profile.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CborError {
    /// The input ends inside an item.
    #[error("the input ends inside an item at byte {0}")]
    Truncated(usize),
    /// Bytes follow the item.
    #[error("{0} bytes follow the item")]
    Trailing(usize),
    /// A reserved additional-information value (28–30), or a break where no item may end.
    #[error("reserved or misplaced head byte {0:#04x} at byte {1}")]
    Reserved(u8, usize),
    /// An indefinite-length byte or text string.
    #[error("indefinite-length string at byte {0}")]
    IndefiniteString(usize),
    /// A text string that is not UTF-8.
    #[error("text string at byte {0} is not UTF-8")]
    Utf8(usize),
    /// Nesting deeper than [`MAX_DEPTH`].
    #[error("nesting deeper than {MAX_DEPTH}")]
    TooDeep,
    /// More items than [`MAX_ITEMS`], or a count larger than the bytes left could hold.
    #[error("more items than the input can hold or the limit allows")]
    TooMany,
    /// A map holds the same key twice.
    #[error("a map at byte {0} holds a key twice")]
    DuplicateKey(usize),
    /// A simple value that is not false, true, null or undefined.
    #[error("unassigned simple value {0}")]
    Simple(u8),
}

/// One decoded item.
#[derive(Debug, Clone, PartialEq)]
pub enum Value<'a> {
    /// Major type 0.
    Uint(u64),
    /// Major type 1: the value is −1 − n.
    Neg(u64),
    /// Major type 2.
    Bytes(&'a [u8]),
    /// Major type 3.
    Text(&'a str),
    /// Major type 4.
    Array(Vec<Node<'a>>),
    /// Major type 5, pairs in the order received.
    Map(Vec<(Node<'a>, Node<'a>)>),
    /// Major type 6: a tag number and its item.
    Tag(u64, Box<Node<'a>>),
    /// `false` / `true`.
    Bool(bool),
    /// `null`.
    Null,
    /// `undefined`.
    Undefined,
    /// A half, single or double float.
    Float(f64),
}

/// An item and the exact bytes it was decoded from.
#[derive(Debug, Clone, PartialEq)]
pub struct Node<'a> {
    /// What the item is.
    pub value: Value<'a>,
    /// Its bytes as received, head included.
    pub raw: &'a [u8],
}

/// Decodes exactly one item that fills `input`.
pub fn decode(input: &[u8]) -> Result<Node<'_>, CborError> {
    let mut r = Reader {
        input,
        pos: 0,
        items: 0,
    };
    let node = r.item(0)?;
    match node {
        Some(node) if r.pos == input.len() => Ok(node),
        Some(_) => Err(CborError::Trailing(input.len() - r.pos)),
        None => Err(CborError::Reserved(0xff, 0)),
    }
}

struct Reader<'a> {
    input: &'a [u8],
    pos: usize,
    items: usize,
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8, CborError> {
        let b = *self
            .input
            .get(self.pos)
            .ok_or(CborError::Truncated(self.pos))?;
        self.pos += 1;
        Ok(b)
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], CborError> {
        let left = self.input.len() - self.pos;
        let n = usize::try_from(n).map_err(|_| CborError::Truncated(self.pos))?;
        if n > left {
            return Err(CborError::Truncated(self.input.len()));
        }
        let s = &self.input[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    /// The argument of a head whose additional information is `ai` (0–27); `None` for 31.
    fn argument(&mut self, ai: u8, at: usize, head: u8) -> Result<Option<u64>, CborError> {
        let n = match ai {
            0..=23 => return Ok(Some(u64::from(ai))),
            24 => 1,
            25 => 2,
            26 => 4,
            27 => 8,
            31 => return Ok(None),
            _ => return Err(CborError::Reserved(head, at)),
        };
        let b = self.take(n)?;
        Ok(Some(
            b.iter().fold(0u64, |acc, &x| (acc << 8) | u64::from(x)),
        ))
    }

    /// A declared count of `per` bytes at least each, checked against what is left.
    fn count(&self, n: u64, per: u64) -> Result<usize, CborError> {
        let left = (self.input.len() - self.pos) as u64;
        if n.saturating_mul(per) > left || n > MAX_ITEMS as u64 {
            return Err(CborError::TooMany);
        }
        Ok(n as usize)
    }

    /// The next item, or `None` at a break (0xff) where `in_indefinite` allows one.
    fn item(&mut self, depth: usize) -> Result<Option<Node<'a>>, CborError> {
        if depth > MAX_DEPTH {
            return Err(CborError::TooDeep);
        }
        self.items += 1;
        if self.items > MAX_ITEMS {
            return Err(CborError::TooMany);
        }
        let start = self.pos;
        let head = self.byte()?;
        if head == 0xff {
            return Ok(None);
        }
        let (major, ai) = (head >> 5, head & 0x1f);
        let arg = self.argument(ai, start, head)?;
        let value = match (major, arg) {
            (0, Some(n)) => Value::Uint(n),
            (1, Some(n)) => Value::Neg(n),
            (2, Some(n)) => Value::Bytes(self.take(n)?),
            (3, Some(n)) => {
                let b = self.take(n)?;
                Value::Text(std::str::from_utf8(b).map_err(|_| CborError::Utf8(start))?)
            }
            (2 | 3, None) => return Err(CborError::IndefiniteString(start)),
            (4, n) => Value::Array(self.array(n, depth)?),
            (5, n) => Value::Map(self.map(n, depth, start)?),
            (6, Some(tag)) => match self.item(depth + 1)? {
                Some(inner) => Value::Tag(tag, Box::new(inner)),
                None => return Err(CborError::Reserved(0xff, self.pos - 1)),
            },
            (7, _) => self.simple(ai, arg, start, head)?,
            _ => return Err(CborError::Reserved(head, start)),
        };
        Ok(Some(Node {
            value,
            raw: &self.input[start..self.pos],
        }))
    }

    fn array(&mut self, n: Option<u64>, depth: usize) -> Result<Vec<Node<'a>>, CborError> {
        match n {
            Some(n) => {
                let n = self.count(n, 1)?;
                // Room for a few items up front, the rest as they come: a declared count costs
                // nothing until its items are there.
                let mut v = Vec::with_capacity(n.min(PREALLOCATE));
                for _ in 0..n {
                    v.push(self.required(depth)?);
                }
                Ok(v)
            }
            None => {
                let mut v = Vec::new();
                while let Some(item) = self.item(depth + 1)? {
                    v.push(item);
                }
                Ok(v)
            }
        }
    }

    fn map(
        &mut self,
        n: Option<u64>,
        depth: usize,
        start: usize,
    ) -> Result<Vec<(Node<'a>, Node<'a>)>, CborError> {
        let mut v = Vec::new();
        match n {
            Some(n) => {
                let n = self.count(n, 2)?;
                v.reserve(n.min(PREALLOCATE));
                for _ in 0..n {
                    let k = self.required(depth)?;
                    v.push((k, self.required(depth)?));
                }
            }
            None => {
                while let Some(k) = self.item(depth + 1)? {
                    v.push((k, self.required(depth)?));
                }
            }
        }
        let mut keys: Vec<KeyId<'_>> = v.iter().map(|(k, _)| KeyId::of(k)).collect();
        keys.sort_unstable();
        if keys.windows(2).any(|w| w[0] == w[1]) {
            return Err(CborError::DuplicateKey(start));
        }
        Ok(v)
    }

    /// An item that must be there (not a break).
    fn required(&mut self, depth: usize) -> Result<Node<'a>, CborError> {
        let at = self.pos;
        self.item(depth + 1)?.ok_or(CborError::Reserved(0xff, at))
    }

    fn simple(
        &mut self,
        ai: u8,
        arg: Option<u64>,
        start: usize,
        head: u8,
    ) -> Result<Value<'a>, CborError> {
        let raw = &self.input[start + 1..self.pos];
        Ok(match ai {
            20 => Value::Bool(false),
            21 => Value::Bool(true),
            22 => Value::Null,
            23 => Value::Undefined,
            24 => return Err(CborError::Simple(arg.unwrap_or(0) as u8)),
            25 => Value::Float(half(u16::from_be_bytes([raw[0], raw[1]]))),
            26 => Value::Float(f64::from(f32::from_be_bytes([
                raw[0], raw[1], raw[2], raw[3],
            ]))),
            27 => Value::Float(f64::from_be_bytes([
                raw[0], raw[1], raw[2], raw[3], raw[4], raw[5], raw[6], raw[7],
            ])),
            0..=19 => return Err(CborError::Simple(ai)),
            _ => return Err(CborError::Reserved(head, start)),
        })
    }
}

/// What makes two map keys the same key: their value for integers and strings (however their
/// heads are encoded), their bytes for anything else.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
enum KeyId<'a> {
    Int(i128),
    Text(&'a str),
    Bytes(&'a [u8]),
    Raw(&'a [u8]),
}

impl<'a> KeyId<'a> {
    fn of(k: &Node<'a>) -> KeyId<'a> {
        match &k.value {
            Value::Uint(n) => KeyId::Int(i128::from(*n)),
            Value::Neg(n) => KeyId::Int(-1 - i128::from(*n)),
            Value::Text(t) => KeyId::Text(t),
            Value::Bytes(b) => KeyId::Bytes(b),
            _ => KeyId::Raw(k.raw),
        }
    }
}

/// IEEE 754 half precision to f64 (RFC 8949 Appendix D).
fn half(h: u16) -> f64 {
    let exp = (h >> 10) & 0x1f;
    let mant = f64::from(h & 0x3ff);
    let val = match exp {
        0 => mant * 2f64.powi(-24),
        31 if mant == 0.0 => f64::INFINITY,
        31 => f64::NAN,
        e => (mant + 1024.0) * 2f64.powi(i32::from(e) - 25),
    };
    if h & 0x8000 != 0 {
        -val
    } else {
        val
    }
}

impl<'a> Node<'a> {
    /// The text, if this is a text string.
    pub fn text(&self) -> Option<&'a str> {
        match self.value {
            Value::Text(t) => Some(t),
            _ => None,
        }
    }

    /// The bytes, if this is a byte string.
    pub fn bytes(&self) -> Option<&'a [u8]> {
        match self.value {
            Value::Bytes(b) => Some(b),
            _ => None,
        }
    }

    /// The number, if this is an unsigned integer.
    pub fn uint(&self) -> Option<u64> {
        match self.value {
            Value::Uint(n) => Some(n),
            _ => None,
        }
    }

    /// The number, if this is an integer that fits an `i64`.
    pub fn int(&self) -> Option<i64> {
        match self.value {
            Value::Uint(n) => i64::try_from(n).ok(),
            Value::Neg(n) => i64::try_from(n).ok().map(|n| -1 - n),
            _ => None,
        }
    }

    /// The items, if this is an array.
    pub fn array(&self) -> Option<&[Node<'a>]> {
        match &self.value {
            Value::Array(v) => Some(v),
            _ => None,
        }
    }

    /// The pairs, if this is a map.
    pub fn map(&self) -> Option<&[(Node<'a>, Node<'a>)]> {
        match &self.value {
            Value::Map(v) => Some(v),
            _ => None,
        }
    }

    /// The value under text key `key`, if this is a map that has it.
    pub fn get(&self, key: &str) -> Option<&Node<'a>> {
        self.map()?
            .iter()
            .find(|(k, _)| k.text() == Some(key))
            .map(|(_, v)| v)
    }

    /// The value under integer key `key`, if this is a map that has it.
    pub fn get_int(&self, key: i64) -> Option<&Node<'a>> {
        self.map()?
            .iter()
            .find(|(k, _)| k.int() == Some(key))
            .map(|(_, v)| v)
    }

    /// This item without any tag `tag` around it (COSE structures may come tagged or not).
    pub fn untag(&self, tag: u64) -> &Node<'a> {
        match &self.value {
            Value::Tag(t, inner) if *t == tag => inner,
            _ => self,
        }
    }

    /// The bytes of an embedded CBOR item: tag 24 around a byte string.
    pub fn embedded(&self) -> Option<&'a [u8]> {
        match &self.value {
            Value::Tag(24, inner) => inner.bytes(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn keeps_raw_bytes_of_every_item_and_accepts_iso_encodings() {
        // {"b": 1, "a": h'00'} (keys out of order), with a non-minimal head for 1.
        let bytes = [0xa2, 0x61, 0x62, 0x18, 0x01, 0x61, 0x61, 0x41, 0x00];
        let n = decode(&bytes).unwrap();
        assert_eq!(n.get("b").unwrap().uint(), Some(1));
        assert_eq!(n.get("b").unwrap().raw, &[0x18, 0x01]);
        assert_eq!(n.get("a").unwrap().bytes(), Some(&[0u8][..]));
        assert_eq!(n.raw, &bytes);
    }

    #[test]
    fn indefinite_containers_read_and_strings_refused() {
        let n = decode(&[0x9f, 0x01, 0x02, 0xff]).unwrap();
        assert_eq!(n.array().unwrap().len(), 2);
        let m = decode(&[0xbf, 0x61, 0x61, 0x01, 0xff]).unwrap();
        assert_eq!(m.get("a").unwrap().uint(), Some(1));
        assert_eq!(
            decode(&[0x5f, 0x41, 0x00, 0xff]),
            Err(CborError::IndefiniteString(0))
        );
    }

    #[test]
    fn bounds_and_errors_are_typed() {
        assert_eq!(
            decode(&[0xa2, 0x01, 0x01, 0x01, 0x02]),
            Err(CborError::DuplicateKey(0))
        );
        // The same keys with a longer head: still the same keys.
        let text = [0xa2, 0x61, 0x61, 0x01, 0x78, 0x01, 0x61, 0x02];
        assert_eq!(decode(&text), Err(CborError::DuplicateKey(0)));
        let alg = [0xa2, 0x01, 0x26, 0x18, 0x01, 0x38, 0x22];
        assert_eq!(decode(&alg), Err(CborError::DuplicateKey(0)));
        assert_eq!(
            decode(&[0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
            Err(CborError::TooMany)
        );
        assert_eq!(decode(&[0x01, 0x02]), Err(CborError::Trailing(1)));
        assert_eq!(
            decode(&[0x5a, 0xff, 0xff, 0xff, 0xff]),
            Err(CborError::Truncated(5))
        );
        assert_eq!(decode(&[0xff]), Err(CborError::Reserved(0xff, 0)));
        assert_eq!(decode(&[0x1c]), Err(CborError::Reserved(0x1c, 0)));
        let deep = vec![0x81; MAX_DEPTH + 2];
        assert_eq!(decode(&deep), Err(CborError::TooDeep));
        assert_eq!(
            decode(&[0xf9, 0x3c, 0x00]).unwrap().value,
            Value::Float(1.0)
        );
        assert_eq!(decode(&[0x62, 0xff, 0xfe]), Err(CborError::Utf8(0)));
    }

    #[test]
    fn tag_24_embeds_and_untag_strips_cose_tags() {
        let n = decode(&[0xd8, 0x18, 0x42, 0x01, 0x02]).unwrap();
        assert_eq!(n.embedded(), Some(&[1u8, 2][..]));
        let t = decode(&[0xd2, 0x80]).unwrap();
        assert!(t.untag(18).array().is_some());
        assert!(t.untag(17).array().is_none());
    }
}
