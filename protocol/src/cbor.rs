//! A strict, allocation-free reader and a deterministic writer for the subset of CBOR
//! (RFC 8949) that gatehouse formats use.
//!
//! Every gatehouse structure has exactly one valid encoding: the reader refuses
//! indefinite lengths, non-minimal integer heads, floats, and map keys out of order. That makes
//! the bytes of a credential a stable cache key and leaves an attacker no room to re-encode a
//! signed structure. Lengths are checked against the bytes actually present before anything is
//! sliced, so a hostile length prefix costs nothing.

use crate::DecodeError;

/// CBOR major types.
const UINT: u8 = 0;
const NINT: u8 = 1;
const BYTES: u8 = 2;
const TEXT: u8 = 3;
const ARRAY: u8 = 4;
const MAP: u8 = 5;
const TAG: u8 = 6;
const SIMPLE: u8 = 7;

const FALSE: u64 = 20;
const TRUE: u64 = 21;

/// Appends deterministic CBOR to a buffer.
pub(crate) struct Writer<'a> {
    buf: &'a mut Vec<u8>,
}

impl<'a> Writer<'a> {
    pub(crate) fn new(buf: &'a mut Vec<u8>) -> Self {
        Self { buf }
    }

    fn head(&mut self, major: u8, value: u64) {
        let m = major << 5;
        if value < 24 {
            self.buf.push(m | value as u8);
        } else if value <= u64::from(u8::MAX) {
            self.buf.extend_from_slice(&[m | 24, value as u8]);
        } else if value <= u64::from(u16::MAX) {
            self.buf.push(m | 25);
            self.buf.extend_from_slice(&(value as u16).to_be_bytes());
        } else if value <= u64::from(u32::MAX) {
            self.buf.push(m | 26);
            self.buf.extend_from_slice(&(value as u32).to_be_bytes());
        } else {
            self.buf.push(m | 27);
            self.buf.extend_from_slice(&value.to_be_bytes());
        }
    }

    pub(crate) fn uint(&mut self, v: u64) -> &mut Self {
        self.head(UINT, v);
        self
    }

    pub(crate) fn int(&mut self, v: i64) -> &mut Self {
        if v >= 0 {
            self.head(UINT, v as u64);
        } else {
            // -1 - n encodes as n; `!v` is exactly -1 - v for negative v.
            self.head(NINT, !v as u64);
        }
        self
    }

    pub(crate) fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.head(BYTES, b.len() as u64);
        self.buf.extend_from_slice(b);
        self
    }

    pub(crate) fn text(&mut self, s: &str) -> &mut Self {
        self.head(TEXT, s.len() as u64);
        self.buf.extend_from_slice(s.as_bytes());
        self
    }

    pub(crate) fn array(&mut self, len: usize) -> &mut Self {
        self.head(ARRAY, len as u64);
        self
    }

    pub(crate) fn map(&mut self, len: usize) -> &mut Self {
        self.head(MAP, len as u64);
        self
    }

    pub(crate) fn tag(&mut self, tag: u64) -> &mut Self {
        self.head(TAG, tag);
        self
    }

    pub(crate) fn bool(&mut self, b: bool) -> &mut Self {
        self.head(SIMPLE, if b { TRUE } else { FALSE });
        self
    }
}

/// Reads CBOR items from a byte slice, borrowing byte strings from it.
#[derive(Clone)]
pub(crate) struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Self {
        Self { data, pos: 0 }
    }

    /// Where the reader stands, in bytes from the start.
    pub(crate) fn position(&self) -> usize {
        self.pos
    }

    fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if n > self.remaining() {
            return Err(DecodeError::Truncated);
        }
        let out = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn byte(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    /// Reads an item head: (major type, argument). Refuses what a deterministic encoder
    /// never writes.
    fn head(&mut self, what: &'static str) -> Result<(u8, u64), DecodeError> {
        let initial = self.byte()?;
        let major = initial >> 5;
        let info = initial & 0x1f;
        let value = match info {
            0..=23 => u64::from(info),
            24 => {
                let v = u64::from(self.byte()?);
                if v < 24 {
                    return Err(DecodeError::NonCanonical(what));
                }
                v
            }
            25 => {
                let b = self.take(2)?;
                let v = u64::from(u16::from_be_bytes([b[0], b[1]]));
                if v <= u64::from(u8::MAX) {
                    return Err(DecodeError::NonCanonical(what));
                }
                v
            }
            26 => {
                let b = self.take(4)?;
                let v = u64::from(u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
                if v <= u64::from(u16::MAX) {
                    return Err(DecodeError::NonCanonical(what));
                }
                v
            }
            27 => {
                let b = self.take(8)?;
                let v = u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
                if v <= u64::from(u32::MAX) {
                    return Err(DecodeError::NonCanonical(what));
                }
                v
            }
            // 28..=30 are reserved; 31 is an indefinite length, which we never accept.
            _ => return Err(DecodeError::NonCanonical(what)),
        };
        Ok((major, value))
    }

    fn expect(&mut self, major: u8, what: &'static str) -> Result<u64, DecodeError> {
        let (m, v) = self.head(what)?;
        if m != major {
            return Err(DecodeError::WrongType(what));
        }
        Ok(v)
    }

    /// The major type of the next item, without consuming it.
    pub(crate) fn peek_major(&self) -> Result<u8, DecodeError> {
        self.data
            .get(self.pos)
            .map(|b| b >> 5)
            .ok_or(DecodeError::Truncated)
    }

    pub(crate) fn uint(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        self.expect(UINT, what)
    }

    /// A uint that must fit `max`.
    pub(crate) fn uint_max(&mut self, what: &'static str, max: u64) -> Result<u64, DecodeError> {
        let v = self.uint(what)?;
        if v > max {
            return Err(DecodeError::OutOfRange(what));
        }
        Ok(v)
    }

    pub(crate) fn int(&mut self, what: &'static str) -> Result<i64, DecodeError> {
        let (m, v) = self.head(what)?;
        match m {
            UINT => i64::try_from(v).map_err(|_| DecodeError::OutOfRange(what)),
            NINT => {
                let n = i64::try_from(v).map_err(|_| DecodeError::OutOfRange(what))?;
                Ok(-1 - n)
            }
            _ => Err(DecodeError::WrongType(what)),
        }
    }

    /// A byte string of at most `max` bytes, borrowed from the input.
    pub(crate) fn bytes(
        &mut self,
        what: &'static str,
        max: usize,
    ) -> Result<&'a [u8], DecodeError> {
        let len = self.expect(BYTES, what)?;
        if len > max as u64 {
            return Err(DecodeError::TooLong(what));
        }
        self.take(len as usize)
    }

    /// A byte string of exactly `N` bytes.
    pub(crate) fn bytes_exact<const N: usize>(
        &mut self,
        what: &'static str,
    ) -> Result<[u8; N], DecodeError> {
        let b = self.bytes(what, N)?;
        <[u8; N]>::try_from(b).map_err(|_| DecodeError::BadLength(what))
    }

    pub(crate) fn text(&mut self, what: &'static str, max: usize) -> Result<&'a str, DecodeError> {
        let len = self.expect(TEXT, what)?;
        if len > max as u64 {
            return Err(DecodeError::TooLong(what));
        }
        let b = self.take(len as usize)?;
        std::str::from_utf8(b).map_err(|_| DecodeError::WrongType(what))
    }

    /// An array header whose length is at most `max`; returns the length.
    pub(crate) fn array(&mut self, what: &'static str, max: usize) -> Result<usize, DecodeError> {
        let len = self.expect(ARRAY, what)?;
        // Every element takes at least one byte: a length beyond what is left is a lie.
        if len > max as u64 || len > self.remaining() as u64 {
            return Err(DecodeError::TooLong(what));
        }
        Ok(len as usize)
    }

    /// An array header of exactly `len` elements.
    pub(crate) fn array_exact(
        &mut self,
        what: &'static str,
        len: usize,
    ) -> Result<(), DecodeError> {
        if self.array(what, len)? != len {
            return Err(DecodeError::BadLength(what));
        }
        Ok(())
    }

    /// A map header whose length is at most `max`; returns the number of pairs.
    pub(crate) fn map(&mut self, what: &'static str, max: usize) -> Result<usize, DecodeError> {
        let len = self.expect(MAP, what)?;
        if len > max as u64 || len.saturating_mul(2) > self.remaining() as u64 {
            return Err(DecodeError::TooLong(what));
        }
        Ok(len as usize)
    }

    pub(crate) fn tag(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        self.expect(TAG, what)
    }

    pub(crate) fn bool(&mut self, what: &'static str) -> Result<bool, DecodeError> {
        match self.expect(SIMPLE, what)? {
            FALSE => Ok(false),
            TRUE => Ok(true),
            _ => Err(DecodeError::WrongType(what)),
        }
    }

    /// Fails unless every byte has been read.
    pub(crate) fn finish(&self, what: &'static str) -> Result<(), DecodeError> {
        if self.pos != self.data.len() {
            return Err(DecodeError::TrailingData(what));
        }
        Ok(())
    }
}

/// Reads the keys of a map with small integer keys in strictly ascending order, so that
/// duplicate or unsorted keys (two encodings of one value) are refused.
pub(crate) struct MapKeys {
    last: Option<i64>,
    what: &'static str,
}

impl MapKeys {
    pub(crate) fn new(what: &'static str) -> Self {
        Self { last: None, what }
    }

    pub(crate) fn next(&mut self, r: &mut Reader<'_>) -> Result<i64, DecodeError> {
        let key = r.int(self.what)?;
        if let Some(last) = self.last {
            // Deterministic CBOR sorts keys by their encoded bytes: all non-negative keys
            // (major 0) before all negative ones (major 1), each group by magnitude.
            if !key_order_less(last, key) {
                return Err(DecodeError::NonCanonical(self.what));
            }
        }
        self.last = Some(key);
        Ok(key)
    }
}

/// Whether integer key `a` sorts strictly before `b` in deterministic CBOR.
pub(crate) fn key_order_less(a: i64, b: i64) -> bool {
    match (a >= 0, b >= 0) {
        (true, true) => a < b,
        (false, false) => a > b,
        (true, false) => true,
        (false, true) => false,
    }
}

/// Major type of a byte string, for callers that peek.
pub(crate) const MAJOR_BYTES: u8 = BYTES;

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(f: impl FnOnce(&mut Writer<'_>)) -> Vec<u8> {
        let mut v = Vec::new();
        f(&mut Writer::new(&mut v));
        v
    }

    #[test]
    fn integers_use_the_shortest_head() {
        assert_eq!(
            enc(|w| {
                w.uint(23);
            }),
            [0x17]
        );
        assert_eq!(
            enc(|w| {
                w.uint(24);
            }),
            [0x18, 24]
        );
        assert_eq!(
            enc(|w| {
                w.uint(256);
            }),
            [0x19, 1, 0]
        );
        assert_eq!(
            enc(|w| {
                w.uint(65536);
            }),
            [0x1a, 0, 1, 0, 0]
        );
        assert_eq!(
            enc(|w| {
                w.uint(1 << 32);
            }),
            [0x1b, 0, 0, 0, 1, 0, 0, 0, 0]
        );
        assert_eq!(
            enc(|w| {
                w.int(-7);
            }),
            [0x26]
        );
        assert_eq!(
            enc(|w| {
                w.int(-65537);
            }),
            [0x3a, 0, 1, 0, 0]
        );
    }

    #[test]
    fn integers_round_trip_at_every_boundary() {
        for v in [
            0u64,
            23,
            24,
            255,
            256,
            65535,
            65536,
            u32::MAX as u64,
            1 << 32,
            u64::MAX,
        ] {
            let b = enc(|w| {
                w.uint(v);
            });
            let mut r = Reader::new(&b);
            assert_eq!(r.uint("v").unwrap(), v);
            r.finish("v").unwrap();
        }
        for v in [-1i64, -24, -25, -256, -257, -65537, i64::MIN] {
            let b = enc(|w| {
                w.int(v);
            });
            assert_eq!(Reader::new(&b).int("v").unwrap(), v);
        }
    }

    #[test]
    fn non_minimal_heads_are_refused() {
        for bad in [
            &[0x18, 5][..],
            &[0x19, 0, 200],
            &[0x1a, 0, 0, 255, 255],
            &[0x1b, 0, 0, 0, 0, 255, 255, 255, 255],
        ] {
            assert_eq!(
                Reader::new(bad).uint("v"),
                Err(DecodeError::NonCanonical("v"))
            );
        }
    }

    #[test]
    fn indefinite_and_reserved_lengths_are_refused() {
        for bad in [0x5f, 0x9f, 0xbf, 0x1c, 0x1d, 0x1e] {
            let mut r = Reader::new(std::slice::from_ref(&bad));
            assert!(matches!(r.head("v"), Err(DecodeError::NonCanonical("v"))));
        }
    }

    #[test]
    fn a_length_beyond_the_input_is_refused_without_allocating() {
        // A byte string that claims 2^63 bytes.
        let b = [0x5b, 0x80, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(
            Reader::new(&b).bytes("b", usize::MAX),
            Err(DecodeError::Truncated)
        );
        // An array that claims 2^32 elements in a 5-byte input.
        let b = [0x9a, 0xff, 0xff, 0xff, 0xff];
        assert_eq!(
            Reader::new(&b).array("a", usize::MAX),
            Err(DecodeError::TooLong("a"))
        );
        assert_eq!(
            Reader::new(&[0x43, 1, 2, 3]).bytes("b", 2),
            Err(DecodeError::TooLong("b"))
        );
    }

    #[test]
    fn map_keys_must_ascend() {
        assert!(key_order_less(1, 4));
        assert!(key_order_less(4, -1));
        assert!(key_order_less(-1, -65537));
        assert!(!key_order_less(4, 4));
        assert!(!key_order_less(-2, -1));
        let b = enc(|w| {
            w.uint(2).uint(1);
        });
        let mut r = Reader::new(&b);
        let mut keys = MapKeys::new("m");
        assert_eq!(keys.next(&mut r).unwrap(), 2);
        assert_eq!(keys.next(&mut r), Err(DecodeError::NonCanonical("m")));
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut r = Reader::new(&[0x01, 0x02]);
        r.uint("v").unwrap();
        assert_eq!(r.finish("x"), Err(DecodeError::TrailingData("x")));
    }
}
