//! Nix's base-32 encoding ("nix32"), used for store path hashes and for hashes in narinfos.
//!
//! It is not RFC 4648: the alphabet drops e, o, t and u, and the first character carries the most
//! significant bits of the *last* byte (Nix encodes the byte string as one little-endian number).

use thiserror::Error;

/// The 32 digits in value order.
const ALPHABET: &[u8; 32] = b"0123456789abcdfghijklmnpqrsvwxyz";

/// Why a nix32 string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Nix32Error {
    /// A character outside the alphabet (this includes upper case and e, o, t, u).
    #[error("invalid nix32 character {0:?}")]
    BadChar(char),
    /// No byte count encodes to this many characters.
    #[error("{0} characters is not the length of any nix32 encoding")]
    BadLength(usize),
    /// The top digit sets bits beyond the decoded length, so re-encoding would not round-trip.
    #[error("nix32 string has non-zero overflow bits")]
    Overflow,
}

/// Number of nix32 characters for `n_bytes` bytes: floor((8n - 1) / 5) + 1, and 0 for 0 bytes.
pub fn encoded_len(n_bytes: usize) -> usize {
    if n_bytes == 0 {
        0
    } else {
        (n_bytes * 8 - 1) / 5 + 1
    }
}

/// Digit values by byte, `NOT_A_DIGIT` for bytes outside the alphabet (a table: every NAR and narinfo
/// request parses a hash, and a search through the alphabet per character showed in profiles).
const DIGITS: [u8; 256] = {
    let mut table = [NOT_A_DIGIT; 256];
    let mut i = 0;
    while i < ALPHABET.len() {
        table[ALPHABET[i] as usize] = i as u8;
        i += 1;
    }
    table
};
const NOT_A_DIGIT: u8 = 0xff;

/// The value of one nix32 digit, if `c` is one.
fn digit_value(c: u8) -> Option<u8> {
    match DIGITS[usize::from(c)] {
        NOT_A_DIGIT => None,
        d => Some(d),
    }
}

/// Encodes bytes as nix32.
pub fn encode(bytes: &[u8]) -> String {
    let len = encoded_len(bytes.len());
    let mut out = String::with_capacity(len);
    // Character k from the left holds the 5-bit group starting at bit 5 * (len - 1 - k).
    for n in (0..len).rev() {
        let b = n * 5;
        let (i, j) = (b / 8, b % 8);
        let low = bytes[i] >> j;
        let high = match bytes.get(i + 1) {
            Some(&next) if j > 3 => next << (8 - j),
            _ => 0,
        };
        out.push(char::from(ALPHABET[usize::from((low | high) & 0x1f)]));
    }
    out
}

/// Decodes nix32, rejecting foreign characters, impossible lengths and non-zero overflow bits.
pub fn decode(s: &str) -> Result<Vec<u8>, Nix32Error> {
    let chars = s.as_bytes();
    let size = chars.len() * 5 / 8;
    if encoded_len(size) != chars.len() {
        return Err(Nix32Error::BadLength(chars.len()));
    }
    let mut out = vec![0u8; size];
    for (n, &c) in chars.iter().rev().enumerate() {
        let digit = match digit_value(c) {
            Some(d) => d,
            // Report the whole character, not a byte of it, when the input is not ASCII.
            None => return Err(Nix32Error::BadChar(first_bad_char(s))),
        };
        let b = n * 5;
        let (i, j) = (b / 8, b % 8);
        out[i] |= digit << j;
        // Bits that fall past the last byte must be zero, as Nix requires.
        let carry = u16::from(digit) >> (8 - j);
        match out.get_mut(i + 1) {
            Some(next) => *next |= carry as u8,
            None if carry != 0 => return Err(Nix32Error::Overflow),
            None => {}
        }
    }
    Ok(out)
}

/// The first character of `s` that is not a nix32 digit.
fn first_bad_char(s: &str) -> char {
    s.chars()
        .find(|c| !c.is_ascii() || digit_value(*c as u8).is_none())
        .unwrap_or('\u{fffd}')
}

/// Whether every byte of `s` is a nix32 digit (no length check).
pub fn is_nix32(s: &str) -> bool {
    s.bytes().all(|c| digit_value(c).is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (hex, nix32) pairs printed by `nix hash to-base32 --type <algo> <hex>` (Nix 2.8).
    const VECTORS: &[(&str, &str)] = &[
        // sha256("")
        (
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73",
        ),
        // sha256("hello\n")
        (
            "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03",
            "00xyyr3fi8l6hb839bv3f7yb86yjv7xi1cgh1xnhipym4asvb4aq",
        ),
        // sha1("hello\n"): 20 bytes, the size of a store path hash
        (
            "f572d396fae9206628714fb2ce00f72e94f2258f",
            "iwjz551fyw0cxcjgf4l6c879zabd6wpm",
        ),
        // store path hashes from `nix-build`, decoded by `nix hash to-base16 --type sha1`
        (
            "7e94930e72f5fbfa2e8ad87fd19253b88eb44506",
            "0r2v93mqaf9d2zyqi8pgmyzmf879753y",
        ),
        (
            "05275d5c354f1f3bbb434e729f503b408ead15f9",
            "z4asv3j07d89ywjf8fxkn7sg6mf5s9q5",
        ),
        // md5("hello\n"): 16 bytes, a length where the top digit has spare bits
        (
            "b1946ac92492d2347c6235b4d2611184",
            "4425hx5d1mc9y39llj4k4nm55i",
        ),
        // sha512("hello\n")
        (
            "e7c22b994c59d9cf2b48e549b1e24666636045930d3da7c1acb299d1c3b7f931\
             f94aae41edda2c2b207a36e10f8bcb8d45223e54878f5b316e7ce3b6bc019629",
            "0lrc0dwnvipqviibf7qfm1y492qvjwb1zhkcyi05cndmva1mr5gjcgrnz1x36djmk0sfg8djd2n0qv68vib2jg590mwznar9jcjphp7",
        ),
        // `nix hash to-base16` of this 52-char string: the leading '1' sets the top bit of the last byte
        (
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b8d5",
            "1mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73",
        ),
        ("", ""),
    ];

    #[test]
    fn real_nix_vectors_encode_and_decode() {
        for (hex_str, nix32) in VECTORS {
            let bytes = hex::decode(hex_str).expect("test hex");
            assert_eq!(encode(&bytes), *nix32, "encode {hex_str}");
            assert_eq!(decode(nix32).expect("decode"), bytes, "decode {nix32}");
        }
    }

    #[test]
    fn encoded_len_matches_formula() {
        for (n, len) in [(0, 0), (1, 2), (16, 26), (20, 32), (32, 52), (64, 103)] {
            assert_eq!(encoded_len(n), len, "{n} bytes");
        }
    }

    #[test]
    fn round_trips_every_length() {
        for n in 0..70usize {
            let bytes: Vec<u8> = (0..n).map(|i| (i * 37 + 11) as u8).collect();
            let enc = encode(&bytes);
            assert_eq!(enc.len(), encoded_len(n));
            assert_eq!(decode(&enc).expect("round trip"), bytes);
            let ones = vec![0xffu8; n];
            assert_eq!(decode(&encode(&ones)).expect("all ones"), ones);
        }
    }

    #[test]
    fn rejects_bad_input() {
        let cases: &[(&str, Nix32Error)] = &[
            // `nix hash to-base16` also refuses this one: the '2' overflows 256 bits
            (
                "2mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73",
                Nix32Error::Overflow,
            ),
            (
                "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c7e",
                Nix32Error::BadChar('e'),
            ),
            (
                "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c7O",
                Nix32Error::BadChar('O'),
            ),
            (
                "0r2v93mqaf9d2zyqi8pgmyzmf879753é",
                Nix32Error::BadLength(33),
            ),
            ("0r2v93mqaf9d2zyqi8pgmyzmf87975é", Nix32Error::BadChar('é')),
            ("0", Nix32Error::BadLength(1)),
            ("000", Nix32Error::BadLength(3)),
            (
                "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c7",
                Nix32Error::BadLength(51),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(decode(input).as_ref(), Err(want), "{input}");
        }
        for c in ['e', 'o', 't', 'u', 'E', '-', '/', ' '] {
            let s = format!("{c}0");
            assert_eq!(decode(&s), Err(Nix32Error::BadChar(c)), "{s:?}");
        }
    }

    #[test]
    fn is_nix32_checks_alphabet_only() {
        assert!(is_nix32("0r2v93mqaf9d2zyqi8pgmyzmf879753y"));
        assert!(!is_nix32("0r2v93mqaf9d2zyqi8pgmyzmf879753u"));
        assert!(!is_nix32("ABC"));
    }
}
