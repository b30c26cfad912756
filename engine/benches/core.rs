//! Micro-benchmarks of the core: the timing wheel, `decide`, deadline expressions and
//! working-day arithmetic. `cargo bench -p shenguan`; results in BENCHMARKS.md.

use std::collections::BTreeMap;
use std::hint::black_box;

use chrono::NaiveDate;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use shenguan::calendar::Calendars;
use shenguan::definition::expr::{parse_time, Env, Scope};
use shenguan::definition::{Registry, Type, Value};
use shenguan::machine::{decide, Command, CommandKind};
use shenguan::timer::wheel::Wheel;

const N: u64 = 1_000_000;
const START: i64 = 1_790_000_000_000;

fn scatter(n: u64) -> Vec<(u64, i64)> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..n)
        .map(|k| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (k, START + (x % 3_600_000) as i64)
        })
        .collect()
}

fn wheel(c: &mut Criterion) {
    let timers = scatter(N);
    let mut g = c.benchmark_group("wheel");
    g.sample_size(10);
    g.throughput(Throughput::Elements(N));
    g.bench_function("insert 1M", |b| {
        b.iter_batched(
            || Wheel::new(START),
            |mut w| {
                for (k, due) in &timers {
                    w.insert(*k, *due);
                }
                w
            },
            BatchSize::LargeInput,
        )
    });
    let full = || {
        let mut w = Wheel::new(START);
        for (k, due) in &timers {
            w.insert(*k, *due);
        }
        w
    };
    g.bench_function("cancel 1M", |b| {
        b.iter_batched(
            full,
            |mut w| {
                for (k, _) in &timers {
                    black_box(w.cancel(k));
                }
                w
            },
            BatchSize::LargeInput,
        )
    });
    g.bench_function("advance through 1M (1 s steps)", |b| {
        b.iter_batched(
            full,
            |mut w| {
                let mut now = START;
                let mut fired = 0;
                while !w.is_empty() {
                    now += 1_000;
                    fired += w.poll(now).len();
                }
                black_box(fired)
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

fn object(v: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
    match v {
        serde_json::Value::Object(m) => m,
        _ => serde_json::Map::new(),
    }
}

fn machine(c: &mut Criterion) {
    let registry = Registry::embedded().expect("workflows");
    let calendars = Calendars::embedded().expect("calendars");
    let def = registry.latest("approval_case").expect("approval_case");
    let start = Command {
        instance: "320700/B-1".into(),
        kind: CommandKind::Start {
            workflow: "approval_case".into(),
            version: None,
            vars: object(serde_json::json!({
                "region": "320700", "case_no": "B-1", "approval_department": "d", "approval_item": "i",
                "handling_item": "h", "applicant_name": "n", "applicant_code": "91110000600037341L",
                "applicant_mobile": "13800138000", "route": "commitment", "scenario": "material_deferral",
                "credit_grade": "A", "commitment_deadline": "2026-10-09", "deferred_materials": "m",
                "supervisors": "s/o", "supervisors_json": "[]", "task_count": 1
            })),
        },
        actor: "bench".into(),
        request_id: None,
        idempotency: None,
    };
    let now = START;
    let accepted = decide(def, None, &start, now, &calendars).expect("start").instance;
    let route =
        Command { kind: CommandKind::Event { name: "route".into(), fields: serde_json::Map::new() }, ..start.clone() };
    let pending = decide(def, Some(&accepted), &route, now, &calendars).expect("route").instance;
    let materials = Command {
        kind: CommandKind::Event { name: "submit_materials".into(), fields: serde_json::Map::new() },
        ..start.clone()
    };
    let mut g = c.benchmark_group("decide");
    g.bench_function("start approval_case", |b| b.iter(|| decide(def, None, black_box(&start), now, &calendars)));
    g.bench_function("route: arm two timers", |b| {
        b.iter(|| decide(def, Some(&accepted), black_box(&route), now, &calendars))
    });
    g.bench_function("materials: cancel two timers", |b| {
        b.iter(|| decide(def, Some(&pending), black_box(&materials), now, &calendars))
    });
    g.finish();
}

fn deadlines(c: &mut Criterion) {
    let calendars = Calendars::embedded().expect("calendars");
    let national = calendars.national();
    let types: BTreeMap<String, Type> =
        [("commitment_deadline".to_owned(), Type::Date), ("inspection_finished".to_owned(), Type::Date)]
            .into_iter()
            .collect();
    let env = Env { vars: &types, event: None, allow_entry: true };
    let mut vars = BTreeMap::new();
    vars.insert("commitment_deadline".to_owned(), Value::Date(NaiveDate::from_ymd_opt(2026, 10, 9).expect("date")));
    vars.insert("inspection_finished".to_owned(), Value::Date(NaiveDate::from_ymd_opt(2026, 9, 25).expect("date")));
    let event = BTreeMap::new();
    let scope = Scope { vars: &vars, event: &event, now: START, entry: START, calendar: national };
    let mut g = c.benchmark_group("deadline expression");
    for src in [
        "commitment_deadline - 1 calendar day at 09:00",
        "entry + 3 working days at end of day",
        "inspection_finished + 5 working days at end of day",
    ] {
        let e = parse_time(src, &env).expect("parses");
        g.bench_function(src, |b| b.iter(|| e.eval(black_box(&scope))));
    }
    g.finish();
    let mut g = c.benchmark_group("calendar");
    let d = NaiveDate::from_ymd_opt(2026, 9, 30).expect("date");
    g.bench_function("add_working_days(2026-09-30, 3)", |b| b.iter(|| national.add_working_days(black_box(d), 3)));
    g.bench_function("add_working_days(2019-01-02, 1500)", |b| {
        let from = NaiveDate::from_ymd_opt(2019, 1, 2).expect("date");
        b.iter(|| national.add_working_days(black_box(from), 1500))
    });
    g.bench_function("is_working_day", |b| b.iter(|| national.is_working_day(black_box(d))));
    g.finish();
}

/// Bearer-token verification: the signature check a first call pays (ES256, RS256), and the
/// cached answer every later call with the same token gets.
fn tokens(c: &mut Criterion) {
    use shenguan::auth::verify::{self, mint_with_pem, Claims, Verifier};
    let dir = tempfile::tempdir().expect("tempdir");
    let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../integration-tests/tests/data/keys");
    std::fs::copy(data.join("rsa-test-only.pub.pem"), dir.path().join("rsa.pem")).expect("copy");
    let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    std::fs::write(dir.path().join("ec.pem"), ec.public_key_pem()).expect("write");
    let verifier = Verifier::new(verify::Config {
        pem: Some(dir.path().to_owned()),
        jwks: None,
        issuer: "bench".into(),
        audience: verify::AUDIENCE.into(),
        leeway: 60,
        dev: None,
    })
    .expect("verifier");
    let claims = |i: u64| Claims {
        region: "320700".into(),
        iss: "bench".into(),
        aud: verify::AUDIENCE.into(),
        ..Claims::valid_for(format!("client-{i}"), vec!["platform".into()], std::time::Duration::from_secs(3600))
    };
    let rsa_private = std::fs::read(data.join("rsa-test-only.key.pem")).expect("key");
    let ec_private = ec.serialize_pem();
    let mut g = c.benchmark_group("token");
    for (name, alg, key, kid) in [
        ("verify ES256 (first use)", jsonwebtoken::Algorithm::ES256, ec_private.as_bytes(), "ec"),
        ("verify RS256 (first use)", jsonwebtoken::Algorithm::RS256, &rsa_private[..], "rsa"),
    ] {
        // More distinct tokens than the cache holds (10,000; emptied when full), cycled: every
        // verification misses it.
        let tokens: Vec<String> =
            (0..10_500).map(|i| mint_with_pem(alg, key, Some(kid), &claims(i)).expect("mint")).collect();
        let mut i = 0;
        g.bench_function(name, |b| {
            b.iter(|| {
                i = (i + 1) % tokens.len();
                verifier.verify(black_box(&tokens[i])).expect("verifies")
            })
        });
    }
    let token =
        mint_with_pem(jsonwebtoken::Algorithm::ES256, ec_private.as_bytes(), Some("ec"), &claims(0)).expect("m");
    verifier.verify(&token).expect("verifies");
    g.bench_function("verify (cached)", |b| b.iter(|| verifier.verify(black_box(&token)).expect("verifies")));
    g.finish();
}

criterion_group!(benches, wheel, machine, deadlines, tokens);
criterion_main!(benches);
