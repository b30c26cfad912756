//! Identifiers and text of the domain, parsed and checked at the edge: Unified Social Credit
//! Codes (GB 32100-2015), citizen ID numbers (GB 11643-1999), region codes (GB/T 2260), case
//! numbers, mobile numbers, free text, and the case and task ids built from them.
//!
//! Every check returns a sentence a person can act on; the API prefixes it with the field name.

use chrono::NaiveDate;
use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};

/// The province-level prefixes of GB/T 2260 region codes (mainland provinces, autonomous
/// regions and municipalities, Taiwan, Hong Kong, Macao).
const PROVINCES: [&str; 34] = [
    "11", "12", "13", "14", "15", "21", "22", "23", "31", "32", "33", "34", "35", "36", "37", "41", "42", "43", "44",
    "45", "46", "50", "51", "52", "53", "54", "61", "62", "63", "64", "65", "71", "81", "82",
];

const USCC_ALPHABET: &str = "0123456789ABCDEFGHJKLMNPQRTUWXY";
const USCC_WEIGHTS: [u32; 17] = [1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28];
const ID_WEIGHTS: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
const ID_CHECK: &[u8; 11] = b"10X98765432";

/// Checks a Unified Social Credit Code: 18 characters of the 31-character alphabet, the last a
/// check character.
pub fn check_uscc(code: &str) -> Result<(), String> {
    if code.chars().count() != 18 {
        return Err(format!("a Unified Social Credit Code has 18 characters, this has {}", code.chars().count()));
    }
    let mut values = Vec::with_capacity(18);
    for (i, c) in code.chars().enumerate() {
        match USCC_ALPHABET.find(c) {
            Some(v) => values.push(v as u32),
            None => return Err(format!("character {} ({c:?}) is not allowed in a Unified Social Credit Code", i + 1)),
        }
    }
    let sum: u32 = values.iter().zip(USCC_WEIGHTS).map(|(v, w)| v * w).sum();
    let check = (31 - sum % 31) % 31;
    if values[17] != check {
        let want = USCC_ALPHABET.as_bytes()[check as usize] as char;
        return Err(format!("check character is wrong (expected {want})"));
    }
    Ok(())
}

/// Checks a citizen ID number: a region code in characters 1–6, a birth date in characters
/// 7–14 that is not after `today`, and the check character (a digit or X).
pub fn check_citizen_id(id: &str, today: NaiveDate) -> Result<(), String> {
    let bytes = id.as_bytes();
    if bytes.len() != 18 || !id.is_ascii() {
        return Err("a citizen ID number has 18 characters".into());
    }
    if !bytes[..17].iter().all(u8::is_ascii_digit) {
        return Err("the first 17 characters of a citizen ID number are digits".into());
    }
    if check_region(&id[..6]).is_err() {
        return Err(format!("characters 1–6 ({}) are not a region code", &id[..6]));
    }
    let birth = &id[6..14];
    match NaiveDate::parse_from_str(birth, "%Y%m%d") {
        Ok(d) if d.format("%Y").to_string().as_str() >= "1900" && d <= today => {}
        Ok(_) => return Err(format!("characters 7–14 ({birth}) are a birth date before 1900 or in the future")),
        Err(_) => return Err(format!("characters 7–14 ({birth}) are not a valid birth date")),
    }
    let sum: u32 = bytes[..17].iter().zip(ID_WEIGHTS).map(|(b, w)| u32::from(b - b'0') * w).sum();
    let want = ID_CHECK[(sum % 11) as usize];
    if bytes[17].to_ascii_uppercase() != want {
        return Err(format!("check character is wrong (expected {})", want as char));
    }
    Ok(())
}

/// A six-digit administrative division code (GB/T 2260) of a known province.
pub fn check_region(code: &str) -> Result<(), String> {
    let bad = || format!("{code:?} is not a six-digit region code such as \"320700\"");
    if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    if !PROVINCES.contains(&&code[..2]) {
        return Err(format!("{code:?} is not a region code: {} is no province's code", &code[..2]));
    }
    Ok(())
}

/// A case number: 1–64 letters, digits, '-', '_' or '.', starting with a letter or digit (so
/// that `.`, `..` and `-` never name a case).
pub fn check_case_no(no: &str) -> Result<(), String> {
    if no.is_empty() || no.len() > 64 {
        return Err("must be 1 to 64 characters".into());
    }
    if !no.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')) {
        return Err("may hold only letters, digits, '-', '_' and '.'".into());
    }
    if !no.as_bytes()[0].is_ascii_alphanumeric() {
        return Err("must start with a letter or a digit".into());
    }
    Ok(())
}

/// A mainland mobile number, the one rule every path uses (intake, catalogs, the SMS sender):
/// `1[3-9]` and nine more digits, with an optional `+86`/`86` prefix, spaces and hyphens
/// allowed. Answers the number as stored and sent: the eleven digits alone.
pub fn mobile(raw: &str) -> Result<String, String> {
    let digits: String = raw.chars().filter(|c| !matches!(c, ' ' | '-')).collect();
    let national =
        digits.strip_prefix("+86").or_else(|| digits.strip_prefix("86").filter(|d| d.len() == 11)).unwrap_or(&digits);
    let b = national.as_bytes();
    if b.len() == 11 && b[0] == b'1' && (b'3'..=b'9').contains(&b[1]) && b.iter().all(u8::is_ascii_digit) {
        Ok(national.to_owned())
    } else {
        Err("is not a mainland mobile number (1[3-9] and nine more digits, +86 allowed)".into())
    }
}

/// Whether `raw` is a mainland mobile number ([`mobile`]).
pub fn check_mobile(raw: &str) -> Result<(), String> {
    mobile(raw).map(|_| ())
}

/// A free-text field: at most `max` characters, at least one of them visible, and none that
/// hides or reorders text — control characters, format characters (zero-width spaces and
/// joiners, bidirectional overrides), line and paragraph separators, private-use and
/// unassigned code points, surrogates.
pub fn check_text(text: &str, max: usize) -> Result<(), String> {
    let n = text.chars().count();
    if n > max {
        return Err(format!("is {n} characters long; at most {max} are allowed"));
    }
    for c in text.chars() {
        use GeneralCategory as G;
        let what = match c.general_category() {
            G::Control => "a control character",
            G::Format => "an invisible formatting character (zero-width or bidirectional)",
            G::LineSeparator | G::ParagraphSeparator => "a line or paragraph separator",
            G::PrivateUse | G::Surrogate | G::Unassigned => "a private-use or unassigned code point",
            _ => continue,
        };
        return Err(format!("contains {what} (U+{:04X})", u32::from(c)));
    }
    if text.chars().all(char::is_whitespace) {
        return Err("is required".into());
    }
    Ok(())
}

/// The id of a case: `<region>/<case_no>`.
pub fn case_id(region: &str, case_no: &str) -> String {
    format!("{region}/{case_no}")
}

/// The id of the n-th supervision task of a case.
pub fn task_id(case_id: &str, n: usize) -> String {
    format!("{case_id}/T{n}")
}

/// Splits and checks a case id.
pub fn parse_case_id(id: &str) -> Result<(&str, &str), String> {
    let Some((region, no)) = id.split_once('/') else {
        return Err(format!("{id:?} is not a case id such as \"320700/SP-2026-0001\""));
    };
    check_region(region)?;
    check_case_no(no).map_err(|e| format!("case number {e}"))?;
    Ok((region, no))
}

/// The case an instance belongs to: a supervision task's case, any other instance itself (a
/// case, a spot-check plan or task). Decided by the id parser: a case number may begin with `T`.
pub fn case_of(instance: &str) -> &str {
    parse_task_id(instance).map_or(instance, |(case, _)| case)
}

/// Splits and checks a task id: the case id and the task number.
pub fn parse_task_id(id: &str) -> Result<(&str, u32), String> {
    let bad = || format!("{id:?} is not a task id such as \"320700/SP-2026-0001/T1\"");
    let (case, n) = id.rsplit_once("/T").ok_or_else(bad)?;
    parse_case_id(case).map_err(|_| bad())?;
    let n: u32 = n.parse().map_err(|_| bad())?;
    if n == 0 {
        return Err(bad());
    }
    Ok((case, n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_belongs_to_its_case_and_a_case_numbered_t_to_itself() {
        assert_eq!(case_of("320700/SP-2026-0001/T2"), "320700/SP-2026-0001");
        assert_eq!(case_of("320700/TZ-2026-0001"), "320700/TZ-2026-0001");
        assert_eq!(case_of("320700/TZ-2026-0001/T1"), "320700/TZ-2026-0001");
        assert_eq!(case_of("SC/320700/FOOD"), "SC/320700/FOOD");
    }

    #[test]
    fn unified_social_credit_codes() {
        assert_eq!(check_uscc("91110000600037341L"), Ok(()));
        assert_eq!(
            check_uscc("91320700MA1MXXXX0X").map_err(|e| e.contains("not allowed") || e.contains("check")),
            Err(true)
        );
        assert!(check_uscc("91110000600037341M").expect_err("check").contains("expected L"));
        assert!(check_uscc("91110000600037341").expect_err("short").contains("18 characters"));
        assert!(check_uscc("9111000060003734IL").expect_err("I").contains("not allowed"));
        assert!(check_uscc("9111000060003734１L").expect_err("fullwidth").contains("not allowed"));
    }

    fn today() -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 11, 27).expect("date")
    }

    /// A citizen ID from its first 17 characters, with the right check character.
    fn with_check(first: &str) -> String {
        let sum: u32 = first.bytes().zip(ID_WEIGHTS).map(|(b, w)| u32::from(b - b'0') * w).sum();
        format!("{first}{}", ID_CHECK[(sum % 11) as usize] as char)
    }

    #[test]
    fn citizen_ids() {
        // A made-up, well-formed number: 11010519491231002X.
        assert_eq!(check_citizen_id("11010519491231002X", today()), Ok(()));
        assert_eq!(check_citizen_id("11010519491231002x", today()), Ok(()));
        assert!(check_citizen_id("110105194912310021", today()).expect_err("check").contains("expected X"));
        assert!(check_citizen_id("110105194913310021", today()).expect_err("date").contains("birth date"));
        assert!(check_citizen_id("1101051949123100", today()).is_err());
        assert!(check_citizen_id("11010519491231002Ä", today()).is_err());
        // Well-formed check characters, impossible content.
        let future = with_check("11010520990101002");
        assert!(check_citizen_id(&future, today()).expect_err("born 2099").contains("future"));
        let tomorrow = with_check("11010520261128002");
        assert!(check_citizen_id(&tomorrow, today()).is_err(), "born tomorrow");
        assert_eq!(check_citizen_id(&with_check("11010520261127002"), today()), Ok(()), "born today");
        let nowhere = with_check("00000019491231002");
        assert!(check_citizen_id(&nowhere, today()).expect_err("region 000000").contains("region"));
        let province_99 = with_check("99010519491231002");
        assert!(check_citizen_id(&province_99, today()).is_err());
    }

    #[test]
    fn hostile_text_is_refused() {
        for (text, why) in [
            ("\u{200B}\u{200B}", "only zero-width spaces"),
            ("公司\u{202E}司公", "a right-to-left override"),
            ("\u{2066}name\u{2069}", "bidirectional isolates"),
            ("line\u{2028}break", "a line separator"),
            ("para\u{2029}graph", "a paragraph separator"),
            ("a\u{FEFF}b", "a zero-width no-break space"),
            ("\u{E000}", "a private-use character"),
            ("tab\there", "a control character"),
            ("   ", "only spaces"),
            ("\u{3000}", "only an ideographic space"),
            ("", "nothing"),
        ] {
            assert!(check_text(text, 100).is_err(), "{why}: {text:?} was accepted");
        }
        assert_eq!(check_text("连云港某某食品有限公司（分公司）", 100), Ok(()));
        assert_eq!(check_text("O'Brien & Sons, Ltd.", 100), Ok(()));
    }

    #[test]
    fn regions_and_case_numbers() {
        assert!(check_region("999999").expect_err("99").contains("province"));
        assert!(check_region("000000").is_err());
        assert_eq!(check_region("110000"), Ok(()));
        assert_eq!(check_region("820000"), Ok(()));
        for no in [".", "..", "-", "_", ".hidden", "-1"] {
            assert!(check_case_no(no).is_err(), "{no:?} was accepted");
        }
        assert_eq!(check_case_no("1.2-3"), Ok(()));
    }

    #[test]
    fn ids_and_fields() {
        assert_eq!(check_region("320700"), Ok(()));
        assert!(check_region("32070").is_err());
        assert!(check_region("012345").is_err());
        assert_eq!(check_case_no("SP-2026.0001_a"), Ok(()));
        assert!(check_case_no("a/b").is_err());
        assert!(check_case_no(&"x".repeat(65)).is_err());
        assert_eq!(check_mobile("13800138000"), Ok(()));
        // The gateway takes +86; intake does too, and stores the eleven digits.
        assert_eq!(mobile("+86 138-0013-8000").as_deref(), Ok("13800138000"));
        assert!(check_mobile("12800138000").is_err());
        assert!(check_mobile("23800138000").is_err());
        assert!(check_text("  ", 10).is_err());
        assert!(check_text("abc\u{0}", 10).is_err());
        assert!(check_text(&"字".repeat(11), 10).is_err());
        assert_eq!(parse_case_id("320700/SP-1"), Ok(("320700", "SP-1")));
        assert!(parse_case_id("SP-1").is_err());
        assert_eq!(parse_task_id("320700/SP-1/T2"), Ok(("320700/SP-1", 2)));
        assert!(parse_task_id("320700/SP-1/T0").is_err());
        assert!(parse_task_id("320700/SP-1").is_err());
        assert_eq!(task_id(&case_id("320700", "SP-1"), 3), "320700/SP-1/T3");
    }
}
