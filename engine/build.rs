//! Generates the gRPC code from ../proto and embeds the shipped calendars and workflows.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The files in `dir` whose names end in `.ext`, sorted; none if `dir` is missing.
fn files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == ext) && p.is_file())
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

fn embed(out: &Path, file: &str, items: &[(&str, Vec<PathBuf>)]) {
    let mut code = String::new();
    for (name, files) in items {
        let _ = writeln!(code, "/// Embedded (file name, text) pairs.\npub const {name}: &[(&str, &str)] = &[");
        for f in files {
            let abs = f.canonicalize().expect("embedded file path");
            let label = f.file_name().and_then(|n| n.to_str()).unwrap_or("?");
            let _ = writeln!(code, "    ({label:?}, include_str!({:?})),", abs.display().to_string());
        }
        code.push_str("];\n");
    }
    std::fs::write(out.join(file), code).expect("write embedded list");
}

/// The migrations of one backend as `(version, description, include_str!(file))`, named and
/// ordered as sqlx's `migrate!` (and `Migrator::new` on the directory) names and orders them:
/// `NNNN_some_words.sql` is version NNNN, description "some words". Built here rather than by
/// `migrate!` so that the build does not compile sqlx's drivers a second time for its proc-macro
/// (BENCHMARKS.md, "Build and CI times"); a test checks the two agree.
fn embed_migrations(out: &Path, root: &Path) {
    let mut code = String::new();
    for (name, dir) in [("SQLITE_MIGRATIONS", "sqlite"), ("POSTGRES_MIGRATIONS", "postgres")] {
        let dir = root.join("migrations").join(dir);
        let mut found: Vec<(i64, String, PathBuf)> = files(&dir, "sql")
            .into_iter()
            .filter_map(|p| {
                let file = p.file_name()?.to_str()?.to_owned();
                let (version, rest) = file.split_once('_')?;
                let description = rest.strip_suffix(".sql")?;
                assert!(
                    !description.ends_with(".up") && !description.ends_with(".down"),
                    "{file}: reversible migrations are not embedded"
                );
                let version: i64 = version.parse().unwrap_or_else(|_| panic!("{file}: no integer version"));
                Some((version, description.replace('_', " "), p))
            })
            .collect();
        assert!(!found.is_empty(), "no migrations in {}", dir.display());
        found.sort_by_key(|(version, ..)| *version);
        let _ = writeln!(code, "/// Embedded (version, description, SQL) triples, by version.\npub(crate) const {name}: &[(i64, &str, &str)] = &[");
        for (version, description, path) in found {
            let abs = path.canonicalize().expect("migration path");
            let _ = writeln!(code, "    ({version}, {description:?}, include_str!({:?})),", abs.display().to_string());
        }
        code.push_str("];\n");
    }
    std::fs::write(out.join("embedded_migrations.rs"), code).expect("write embedded migrations");
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = PathBuf::from(std::env::var("OUT_DIR")?);

    let calendars = root.join("ops/calendars");
    let years: Vec<PathBuf> = files(&calendars, "toml")
        .into_iter()
        .filter(|p| {
            p.file_stem()
                .and_then(|s| s.to_str())
                .is_some_and(|s| s.len() == 4 && s.bytes().all(|b| b.is_ascii_digit()))
        })
        .collect();
    embed(&out, "embedded_calendars.rs", &[("YEARS", years), ("REGIONS", files(&calendars.join("regions"), "toml"))]);
    embed(&out, "embedded_workflows.rs", &[("WORKFLOWS", files(&root.join("workflows"), "toml"))]);
    embed_migrations(&out, &root);
    println!("cargo:rerun-if-changed={}", calendars.display());
    println!("cargo:rerun-if-changed={}", calendars.join("regions").display());
    println!("cargo:rerun-if-changed={}", root.join("workflows").display());
    println!("cargo:rerun-if-changed={}", root.join("migrations").display());
    println!("cargo:rerun-if-changed={}", root.join("migrations/sqlite").display());
    println!("cargo:rerun-if-changed={}", root.join("migrations/postgres").display());
    println!("cargo:rerun-if-changed={}", root.join("proto").display());

    // protoc comes from the build, so a fresh machine needs nothing installed by hand.
    std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?);
    let protos: Vec<PathBuf> = std::fs::read_dir(root.join("proto/shenguan/v1"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "proto"))
        .collect();
    tonic_prost_build::configure()
        // `--json` output of the CLI client serialises responses as they are.
        .type_attribute(".", "#[derive(serde::Serialize)]")
        .file_descriptor_set_path(out.join("shenguan_descriptor.bin"))
        // A body that is not valid protobuf is the caller's error (INVALID_ARGUMENT), not ours.
        .codec_path("crate::codec::Codec")
        .compile_protos(&protos, &[root.join("proto")])?;
    Ok(())
}
