//! Lower-case hexadecimal text of bytes (digests, signatures).

/// `bytes` as lower-case hex, two characters each.
pub fn encode(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
            // Writing to a String cannot fail.
            let _ = write!(out, "{b:02x}");
            out
        })
}

#[cfg(test)]
mod tests {
    #[test]
    fn two_lower_case_digits_per_byte() {
        assert_eq!(super::encode(&[0, 0x0f, 0xab, 0xff]), "000fabff");
    }
}
