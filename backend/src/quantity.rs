//! Kubernetes resource quantities as byte counts (`10Gi`, `500M`, `1e9`,
//! `1.5Gi`), rounded up to a whole byte like `Quantity.Value()`.
//!
//! Grammar (k8s.io/apimachinery/pkg/api/resource):
//! `<sign>? <digits> ( . <digits> )? ( Ki|Mi|Gi|Ti|Pi|Ei | m|k|M|G|T|P|E | (e|E) <sign>? <digits> )?`

/// Parses a quantity; negatives, garbage and values above `u64::MAX` are errors.
pub fn parse(text: &str) -> Result<u64, String> {
    let s = text;
    if s.is_empty() {
        return Err("empty quantity".into());
    }
    let (negative, s) = match s.as_bytes()[0] {
        b'+' => (false, &s[1..]),
        b'-' => (true, &s[1..]),
        _ => (false, s),
    };
    if negative {
        return Err("negative quantity".into());
    }
    let number_end = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (number, suffix) = s.split_at(number_end);
    let (int_part, frac_part) = match number.split_once('.') {
        Some((i, f)) if !f.contains('.') => (i, f),
        Some(_) => return Err("more than one decimal point".into()),
        None => (number, ""),
    };
    if int_part.is_empty() && frac_part.is_empty() {
        return Err("no digits".into());
    }

    // value = mantissa * num / den, kept exact in u128 until the final rounding.
    let too_big = || "quantity is too large".to_string();
    let mut mantissa: u128 = 0;
    for b in int_part.bytes().chain(frac_part.bytes()) {
        mantissa = mantissa.checked_mul(10).and_then(|m| m.checked_add(u128::from(b - b'0'))).ok_or_else(too_big)?;
    }
    let frac_digits = u32::try_from(frac_part.len()).map_err(|_| too_big())?;
    let mut den: u128 = 10u128.checked_pow(frac_digits).ok_or_else(too_big)?;
    let mut num: u128 = 1;

    match suffix {
        "" => {}
        "Ki" => num = 1 << 10,
        "Mi" => num = 1 << 20,
        "Gi" => num = 1 << 30,
        "Ti" => num = 1 << 40,
        "Pi" => num = 1 << 50,
        "Ei" => num = 1 << 60,
        "m" => den = den.checked_mul(1000).ok_or_else(too_big)?,
        "k" => num = 1_000,
        "M" => num = 1_000_000,
        "G" => num = 1_000_000_000,
        "T" => num = 1_000_000_000_000,
        "P" => num = 1_000_000_000_000_000,
        "E" => num = 1_000_000_000_000_000_000,
        exp if exp.starts_with('e') || exp.starts_with('E') => {
            let digits = &exp[1..];
            let (neg_exp, digits) = match digits.as_bytes().first() {
                Some(b'+') => (false, &digits[1..]),
                Some(b'-') => (true, &digits[1..]),
                _ => (false, digits),
            };
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!("invalid exponent in {text:?}"));
            }
            let e: u32 = digits.parse().map_err(|_| too_big())?;
            if neg_exp {
                den = den.checked_mul(10u128.checked_pow(e).ok_or_else(too_big)?).ok_or_else(too_big)?;
            } else if mantissa != 0 {
                num = 10u128.checked_pow(e).ok_or_else(too_big)?;
            }
        }
        other => return Err(format!("unknown suffix {other:?} (use Ki, Mi, Gi, Ti, Pi, Ei, k, M, G, T, P or E)")),
    }

    let scaled = mantissa.checked_mul(num).ok_or_else(too_big)?;
    let bytes = scaled.div_ceil(den);
    u64::try_from(bytes).map_err(|_| too_big())
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn plain_binary_decimal_and_exponent() {
        let cases: &[(&str, u64)] = &[
            ("0", 0),
            ("1", 1),
            ("+5", 5),
            ("1048576", 1 << 20),
            ("1Ki", 1024),
            ("10Mi", 10 << 20),
            ("1Gi", 1 << 30),
            ("2Ti", 2 << 40),
            ("1Pi", 1 << 50),
            ("7Ei", 7 << 60),
            ("1k", 1000),
            ("500M", 500_000_000),
            ("1G", 1_000_000_000),
            ("3T", 3_000_000_000_000),
            ("1P", 1_000_000_000_000_000),
            ("18E", 18_000_000_000_000_000_000),
            ("1e9", 1_000_000_000),
            ("1E3", 1000),
            ("5e+2", 500),
            ("1.5Gi", 3 << 29),
            ("0.5Ki", 512),
            (".5Ki", 512),
            ("1.", 1),
            ("1500m", 2),
            ("1e-1", 1),
            ("0e999", 0),
            ("18446744073709551615", u64::MAX),
        ];
        for (text, want) in cases {
            assert_eq!(parse(text), Ok(*want), "{text}");
        }
    }

    #[test]
    fn rejects_negatives_garbage_and_overflow() {
        for text in [
            "",
            "-1",
            "-1Gi",
            "Gi",
            "1GB",
            "1gi",
            "1 Gi",
            " 1",
            "1..2",
            "1.2.3",
            ".",
            "+",
            "e3",
            "1e",
            "1e+",
            "1ee3",
            "1Kii",
            "abc",
            "1Yi",
            "0x10",
            "19E",
            "16Ei",
            "18446744073709551616",
            "1e20",
            "1e99999999999",
            "99999999999999999999999999999999999999999999",
        ] {
            assert!(parse(text).is_err(), "{text:?} must be rejected");
        }
    }
}
