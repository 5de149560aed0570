//! Kubernetes resource quantities (`1Gi`, `1.5G`, `512M`, `2e9`, `1073741824`) as whole bytes, with the
//! grammar of apimachinery's `resource.Quantity`, in exact integer arithmetic (no floating point). The
//! schema only says "int or string", so anything else reaches the operator and gets an error a user can act
//! on.

/// Significant digits accepted in the number (the API server keeps 2^63-1 at most anyway).
const MAX_DIGITS: usize = 30;
/// Largest decimal exponent accepted (`1e30`); bigger values could never fit in bytes.
const MAX_EXPONENT: i32 = 30;

/// A quantity of bytes, rounded up to a whole byte (as `Quantity.Value()` does).
pub fn to_bytes(quantity: &str) -> Result<u64, String> {
    let fail = |why: &str| {
        format!(
            "`{quantity}` is not a byte quantity ({why}); use a number with an optional suffix: Ki, Mi, Gi, \
             Ti (powers of 1024), k, M, G, T (powers of 1000), e.g. 1Gi or 1500M"
        )
    };
    let (negative, rest) = match quantity.as_bytes().first() {
        Some(b'-') => (true, &quantity[1..]),
        Some(b'+') => (false, &quantity[1..]),
        Some(_) => (false, quantity),
        None => return Err(fail("empty")),
    };
    let number_len = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    let (number, suffix) = rest.split_at(number_len);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() {
        return Err(fail("no number"));
    }
    if fraction.contains('.') {
        return Err(fail("more than one decimal point"));
    }
    let digits = format!("{whole}{fraction}");
    let significant = digits.trim_start_matches('0');
    if significant.len() > MAX_DIGITS {
        return Err(fail("too many digits"));
    }
    // value = mantissa × 10^exponent10 × 2^exponent2
    let mantissa: u128 = if significant.is_empty() {
        0
    } else {
        significant.parse().map_err(|_| fail("bad digits"))?
    };
    let mut exponent10 = -i32::try_from(fraction.len()).map_err(|_| fail("too many digits"))?;
    let mut exponent2 = 0u32;
    match suffix {
        "" => {}
        "Ki" => exponent2 = 10,
        "Mi" => exponent2 = 20,
        "Gi" => exponent2 = 30,
        "Ti" => exponent2 = 40,
        "Pi" => exponent2 = 50,
        "Ei" => exponent2 = 60,
        "m" => exponent10 -= 3,
        "k" => exponent10 += 3,
        "M" => exponent10 += 6,
        "G" => exponent10 += 9,
        "T" => exponent10 += 12,
        "P" => exponent10 += 15,
        "E" => exponent10 += 18,
        _ => {
            let exponent = suffix
                .strip_prefix(['e', 'E'])
                .ok_or_else(|| fail(&format!("unknown suffix `{suffix}`")))?;
            let unsigned = exponent.strip_prefix(['+', '-']).unwrap_or(exponent);
            if unsigned.is_empty() || !unsigned.bytes().all(|b| b.is_ascii_digit()) {
                return Err(fail(&format!("bad exponent `{suffix}`")));
            }
            let e: i32 = exponent
                .parse()
                .ok()
                .filter(|e: &i32| e.abs() <= MAX_EXPONENT)
                .ok_or_else(|| fail("exponent out of range"))?;
            exponent10 += e;
        }
    }
    if negative && mantissa != 0 {
        return Err(fail("negative"));
    }
    let too_large = || fail("more than 2^64-1 bytes");
    let mut value = mantissa.checked_shl(exponent2).ok_or_else(too_large)?;
    if value >> exponent2 != mantissa {
        return Err(too_large());
    }
    if exponent10 >= 0 {
        let scale = 10u128
            .checked_pow(exponent10.unsigned_abs())
            .ok_or_else(too_large)?;
        value = value.checked_mul(scale).ok_or_else(too_large)?;
    } else if value != 0 {
        // Round a fraction of a byte up, like Quantity.Value().
        value = match 10u128.checked_pow(exponent10.unsigned_abs()) {
            Some(scale) => value.div_ceil(scale),
            None => 1,
        };
    }
    u64::try_from(value).map_err(|_| too_large())
}

#[cfg(test)]
mod tests {
    use super::to_bytes;

    #[test]
    fn binary_decimal_exponent_and_plain_forms() {
        for (q, bytes) in [
            ("1Gi", 1u64 << 30),
            ("1.5Gi", 1_610_612_736),
            ("1536Mi", 1_610_612_736),
            ("512Ki", 524_288),
            ("2Ti", 2 << 40),
            ("1G", 1_000_000_000),
            ("1.5G", 1_500_000_000),
            ("500M", 500_000_000),
            ("3k", 3000),
            ("1073741824", 1 << 30),
            ("+1024", 1024),
            ("2e9", 2_000_000_000),
            ("2E+3", 2000),
            ("15e-1", 2),
            ("0", 0),
            ("0.0Gi", 0),
            ("-0", 0),
            (".5Ki", 512),
            ("1.", 1),
            ("1500m", 2),
            ("0001Gi", 1 << 30),
            ("15Ei", 15 << 60),
            ("18446744073709551615", u64::MAX),
        ] {
            assert_eq!(to_bytes(q), Ok(bytes), "{q}");
        }
    }

    #[test]
    fn bad_quantities_say_why() {
        for (q, why) in [
            ("", "empty"),
            ("lots", "no number"),
            ("Gi", "no number"),
            ("1GB", "unknown suffix `GB`"),
            ("1gi", "unknown suffix `gi`"),
            ("1 Gi", "unknown suffix ` Gi`"),
            ("1.2.3", "more than one decimal point"),
            ("-1Gi", "negative"),
            ("1e", "bad exponent"),
            ("1e+", "bad exponent"),
            ("1e99", "exponent out of range"),
            ("16Ei", "more than 2^64-1 bytes"),
            ("18446744073709551616", "more than 2^64-1 bytes"),
            ("1e30", "more than 2^64-1 bytes"),
            ("1234567890123456789012345678901", "too many digits"),
        ] {
            let e = to_bytes(q).unwrap_err();
            assert!(e.contains(why), "{q}: {e}");
            assert!(e.contains("e.g. 1Gi"), "{q}: {e}");
        }
    }
}
