//! Kubernetes resource quantities as CSI ephemeral volumes carry them in the
//! `size` attribute ("1Gi", "500M", "1073741824").

/// Bytes of a quantity: an integer with an optional binary (Ki..Ei) or
/// decimal (k..E) suffix. Fractions and exponents are not accepted.
pub fn parse(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, suffix) = s.split_at(split);
    let n: u64 = digits.parse().ok()?;
    let factor: u64 = match suffix {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "Pi" => 1 << 50,
        "Ei" => 1 << 60,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "P" => 1_000_000_000_000_000,
        "E" => 1_000_000_000_000_000_000,
        _ => return None,
    };
    n.checked_mul(factor)
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn quantities() {
        assert_eq!(parse("1Gi"), Some(1 << 30));
        assert_eq!(parse("500M"), Some(500_000_000));
        assert_eq!(parse("4096"), Some(4096));
        assert_eq!(parse(" 2Mi "), Some(2 << 20));
        for bad in ["", "Gi", "1.5Gi", "1gi", "-1", "1e9", "99999999999Ei"] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }
}
