//! Credit grades (§7, §12): a closed, configured set, matched after normalisation, some of
//! which bar an applicant from the commitment route.
//!
//! A grade as sent is normalised (Unicode NFKC, so full-width `Ａ` is `A`; surrounding white
//! space trimmed; case folded) and must then name one of the configured grades; it is stored
//! in the configured spelling. So `DISHONEST`, `Dishonest` and ` dishonest` are the barred
//! grade `dishonest`, and a grade nobody configured is an error, never a pass.

use unicode_normalization::UnicodeNormalization;

/// The grades of the public credit evaluation used by default: A (守信, good standing),
/// B (基本守信), C (警示), D (严重失信), and `dishonest` for an applicant on the dishonesty list.
pub const DEFAULT_GRADES: [&str; 5] = ["A", "B", "C", "D", "dishonest"];
/// Grades barred from the commitment route by default.
pub const DEFAULT_BARRED: [&str; 2] = ["D", "dishonest"];

/// The configured grades.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreditGrades {
    grades: Vec<String>,
    barred: Vec<String>,
}

fn normalise(text: &str) -> String {
    text.nfkc().collect::<String>().trim().to_lowercase()
}

impl Default for CreditGrades {
    fn default() -> Self {
        CreditGrades {
            grades: DEFAULT_GRADES.iter().map(|g| (*g).to_owned()).collect(),
            barred: DEFAULT_BARRED.iter().map(|g| (*g).to_owned()).collect(),
        }
    }
}

impl CreditGrades {
    /// The grades `grades`, of which `barred` may not take the commitment route. Every barred
    /// grade must be one of the grades; no two grades may normalise alike.
    pub fn new(grades: &[String], barred: &[String]) -> Result<Self, String> {
        if grades.is_empty() {
            return Err("at least one credit grade must be configured".into());
        }
        let mut seen: Vec<String> = Vec::new();
        for g in grades {
            let n = normalise(g);
            if n.is_empty() {
                return Err(format!("credit grade {g:?} is blank"));
            }
            if seen.contains(&n) {
                return Err(format!("credit grade {g:?} is configured twice"));
            }
            seen.push(n);
        }
        let set = CreditGrades { grades: grades.iter().map(|g| g.trim().to_owned()).collect(), barred: Vec::new() };
        let mut out = Vec::new();
        for b in barred {
            match set.parse(b) {
                Ok(g) => out.push(g.to_owned()),
                Err(_) => {
                    return Err(format!(
                        "barred credit grade {b:?} is not one of the grades ({})",
                        set.grades.join(", ")
                    ))
                }
            }
        }
        Ok(CreditGrades { barred: out, ..set })
    }

    /// The configured grade `text` names, in its configured spelling.
    pub fn parse(&self, text: &str) -> Result<&str, String> {
        let n = normalise(text);
        self.grades
            .iter()
            .find(|g| normalise(g) == n)
            .map(String::as_str)
            .ok_or_else(|| format!("{text:?} is not a credit grade; one of {}", self.grades.join(", ")))
    }

    /// Whether the (configured) grade may not take the commitment route.
    pub fn is_barred(&self, grade: &str) -> bool {
        self.barred.iter().any(|b| b == grade)
    }

    /// The configured grades.
    pub fn grades(&self) -> &[String] {
        &self.grades
    }

    /// The barred grades.
    pub fn barred(&self) -> &[String] {
        &self.barred
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_of_a_barred_grade_are_that_grade() {
        let grades = CreditGrades::default();
        for text in ["dishonest", "DISHONEST", "Dishonest", " dishonest", "dishonest\u{3000}", "ｄｉｓｈｏｎｅｓｔ"]
        {
            assert_eq!(grades.parse(text), Ok("dishonest"), "{text:?}");
        }
        assert!(grades.is_barred("dishonest"));
        assert_eq!(grades.parse("ａ"), Ok("A"));
        assert!(!grades.is_barred("A"));
    }

    #[test]
    fn an_unknown_grade_is_an_error_not_a_pass() {
        let grades = CreditGrades::default();
        for text in ["AAA", "", "  ", "dis honest", "E"] {
            assert!(grades.parse(text).is_err(), "{text:?}");
        }
    }

    #[test]
    fn configuration_is_checked() {
        let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
        assert!(CreditGrades::new(&s(&["A", "a"]), &[]).is_err(), "twice after normalisation");
        assert!(CreditGrades::new(&s(&["A"]), &s(&["B"])).is_err(), "barred but not a grade");
        assert!(CreditGrades::new(&[], &[]).is_err());
        let g = CreditGrades::new(&s(&["优", "良", "差"]), &s(&["差"])).expect("valid");
        assert!(g.is_barred(g.parse(" 差 ").expect("grade")));
    }
}
