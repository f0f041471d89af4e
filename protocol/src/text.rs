//! The QR text form: `GH1:` followed by the token in base45 (RFC 9285), whose alphabet is
//! exactly QR alphanumeric mode, so a QR code holds it at 5.5 bits a character.

use crate::token::MAX_TOKEN_LEN;
use crate::DecodeError;

/// Prefix of the QR text form; names the format and its version.
pub const QR_PREFIX: &str = "GH1:";

const ALPHABET: &[u8; 45] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:";

/// Token bytes to QR text.
pub fn to_qr_text(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(QR_PREFIX.len() + bytes.len() * 3 / 2 + 2);
    out.push_str(QR_PREFIX);
    for chunk in bytes.chunks(2) {
        let mut n = match chunk {
            [a, b] => usize::from(*a) * 256 + usize::from(*b),
            [a] => usize::from(*a),
            _ => 0,
        };
        let digits = if chunk.len() == 2 { 3 } else { 2 };
        for _ in 0..digits {
            out.push(char::from(ALPHABET[n % 45]));
            n /= 45;
        }
    }
    out
}

fn value(c: u8) -> Result<usize, DecodeError> {
    ALPHABET
        .iter()
        .position(|&a| a == c)
        .ok_or(DecodeError::BadBase45)
}

/// QR text to token bytes. The length is bounded before anything is allocated.
pub fn from_qr_text(text: &str) -> Result<Vec<u8>, DecodeError> {
    let body = text
        .strip_prefix(QR_PREFIX)
        .ok_or(DecodeError::BadPrefix)?
        .as_bytes();
    if body.len() > MAX_TOKEN_LEN.div_ceil(2) * 3 {
        return Err(DecodeError::TooLong("QR text"));
    }
    if body.len() % 3 == 1 {
        return Err(DecodeError::BadBase45);
    }
    let mut out = Vec::with_capacity(body.len() / 3 * 2 + 1);
    for chunk in body.chunks(3) {
        let mut n = 0usize;
        for &c in chunk.iter().rev() {
            n = n * 45 + value(c)?;
        }
        if chunk.len() == 3 {
            if n > 0xffff {
                return Err(DecodeError::BadBase45);
            }
            out.extend_from_slice(&[(n >> 8) as u8, n as u8]);
        } else {
            if n > 0xff {
                return Err(DecodeError::BadBase45);
            }
            out.push(n as u8);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc9285_examples() {
        // RFC 9285 §4.3: "AB" → "BB8", "Hello!!" → "%69 VD92EX0", "ietf!" → "QED8WEX0".
        assert_eq!(to_qr_text(b"AB"), "GH1:BB8");
        assert_eq!(to_qr_text(b"Hello!!"), "GH1:%69 VD92EX0");
        assert_eq!(to_qr_text(b"ietf!"), "GH1:QED8WEX0");
        assert_eq!(from_qr_text("GH1:QED8WEX0").unwrap(), b"ietf!");
        assert_eq!(from_qr_text("GH1:%69 VD92EX0").unwrap(), b"Hello!!");
    }

    #[test]
    fn bad_text_is_refused() {
        assert_eq!(from_qr_text("HC1:BB8"), Err(DecodeError::BadPrefix));
        assert_eq!(from_qr_text("GH1:B"), Err(DecodeError::BadBase45));
        assert_eq!(from_qr_text("GH1:bb8"), Err(DecodeError::BadBase45));
        // 45³−1 overflows two bytes.
        assert_eq!(from_qr_text("GH1:::::"), Err(DecodeError::BadBase45));
        assert_eq!(
            from_qr_text(&format!("GH1:{}", "0".repeat(3000))),
            Err(DecodeError::TooLong("QR text"))
        );
    }
}
