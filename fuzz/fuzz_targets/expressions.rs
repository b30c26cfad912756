//! The time, guard and value expression parsers on any text, over every variable type.
#![no_main]

use std::collections::BTreeMap;

use shenguan::definition::expr::{parse_guard, parse_time, parse_value, Env};
use shenguan::definition::Type;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let vars: BTreeMap<String, Type> = [
        ("name", Type::Str),
        ("count", Type::Int),
        ("flag", Type::Bool),
        ("due_date", Type::Date),
        ("at", Type::Instant),
    ]
    .into_iter()
    .map(|(k, t)| (k.to_owned(), t))
    .collect();
    let fields: BTreeMap<String, Type> = [("finished_on", Type::Date), ("rectified", Type::Bool)]
        .into_iter()
        .map(|(k, t)| (k.to_owned(), t))
        .collect();
    for env in [
        Env { vars: &vars, event: None, allow_entry: true },
        Env { vars: &vars, event: Some(&fields), allow_entry: false },
    ] {
        let _ = parse_time(text, &env);
        let _ = parse_guard(text, &env);
        for t in [Type::Str, Type::Int, Type::Bool, Type::Date, Type::Instant] {
            let _ = parse_value(text, t, &env);
        }
    }
});
