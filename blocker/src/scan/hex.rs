//! SHA-256 digests as text: 64 hexadecimal digits.

use std::fmt::Write;

use super::Sha256;

const DIGITS: usize = 2 * std::mem::size_of::<Sha256>();

/// Reads 64 hexadecimal digits, in either case.
pub fn parse_sha256(text: &str) -> Result<Sha256, String> {
    let length = text.chars().count();
    if length != DIGITS {
        return Err(format!(
            "a SHA-256 is {DIGITS} hexadecimal digits, this is {length} characters long"
        ));
    }
    let mut hash = Sha256::default();
    for (index, character) in text.chars().enumerate() {
        let Some(value) = character.to_digit(16) else {
            return Err(format!(
                "character {} ({character:?}) is not a hexadecimal digit",
                index + 1
            ));
        };
        let shift = if index % 2 == 0 { 4 } else { 0 };
        hash[index / 2] |= (value as u8) << shift;
    }
    Ok(hash)
}

/// The lowercase form `sha256sum` prints.
pub fn to_hex(hash: &Sha256) -> String {
    let mut text = String::with_capacity(DIGITS);
    for byte in hash {
        // Writing to a String cannot fail.
        let _ = write!(text, "{byte:02x}");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_either_case() {
        let lower = parse_sha256(EMPTY_SHA256).unwrap();
        let upper = parse_sha256(&EMPTY_SHA256.to_uppercase()).unwrap();
        assert_eq!(lower, upper);
        assert_eq!(lower[..4], [0xe3, 0xb0, 0xc4, 0x42]);
        assert_eq!(to_hex(&upper), EMPTY_SHA256);
    }

    #[test]
    fn refuses_a_wrong_length() {
        for text in ["", "abc", &EMPTY_SHA256[1..], &format!("{EMPTY_SHA256}0")] {
            let error = parse_sha256(text).unwrap_err();
            assert!(
                error.contains(&format!("{} characters long", text.len())),
                "{error}"
            );
        }
        // Counted in characters, not bytes: 63 digits and an `é` are 64 characters.
        let accented = format!("{}é", &EMPTY_SHA256[1..]);
        assert_eq!(
            parse_sha256(&accented).unwrap_err(),
            "character 64 ('é') is not a hexadecimal digit"
        );
    }

    #[test]
    fn names_the_first_bad_character() {
        let text = format!("{}g{}", &EMPTY_SHA256[..9], &EMPTY_SHA256[10..]);
        assert_eq!(
            parse_sha256(&text).unwrap_err(),
            "character 10 ('g') is not a hexadecimal digit"
        );
        let text = format!("{} ", &EMPTY_SHA256[..63]);
        assert_eq!(
            parse_sha256(&text).unwrap_err(),
            "character 64 (' ') is not a hexadecimal digit"
        );
    }

    proptest! {
        #[test]
        fn any_hash_round_trips(hash in any::<Sha256>()) {
            let text = to_hex(&hash);
            prop_assert_eq!(text.len(), DIGITS);
            prop_assert_eq!(parse_sha256(&text), Ok(hash));
            prop_assert_eq!(parse_sha256(&text.to_uppercase()), Ok(hash));
        }
    }
}
