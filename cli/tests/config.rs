//! `serve --config FILE`, `config print` and `config check` as the binary runs them: the file
//! under the environment under the flags, each value's source, secrets hidden, every problem
//! at FILE:LINE, and the shipped files kept true.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn shenguan() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_shenguan"));
    // The tests say which variables are set; the machine's own must not leak in.
    c.env_clear();
    c
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
}

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

fn line<'a>(printed: &'a str, key: &str) -> &'a str {
    printed.lines().find(|l| l.starts_with(&format!("{key} = "))).unwrap_or_else(|| panic!("no {key} in {printed}"))
}

#[test]
fn the_file_is_overridden_by_the_environment_and_the_environment_by_flags() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("shenguan.toml");
    std::fs::write(
        &file,
        "# 审管联动 configuration\nlisten = \"0.0.0.0:1234\"\nlease = \"9s\"\ncredit-grade = [\"A\", \"B\", \"C\"]\n\
         barred-credit-grade = [\"C\"]\nnode = \"from-file\"\nproduction = true\n",
    )
    .expect("write");
    let o = shenguan()
        .args(["config", "print", "--config"])
        .arg(&file)
        .args(["--lease", "7s"])
        .env("SHENGUAN_NODE", "from-env")
        .env("SHENGUAN_DATABASE", "postgres://shenguan:s3cret-口令@db.example.gov.cn:5432/shenguan")
        .output()
        .expect("run");
    assert!(o.status.success(), "{}", text(&o));
    let printed = String::from_utf8_lossy(&o.stdout).into_owned();
    let at = |n: usize| format!("# file {}:{n}", file.display());
    assert_eq!(line(&printed, "listen"), format!("listen = \"0.0.0.0:1234\"  {}", at(2)));
    assert_eq!(line(&printed, "lease"), "lease = \"7s\"  # flag");
    assert_eq!(line(&printed, "credit-grade"), format!("credit-grade = [\"A\", \"B\", \"C\"]  {}", at(4)));
    assert_eq!(line(&printed, "node"), "node = \"from-env\"  # env SHENGUAN_NODE");
    assert_eq!(line(&printed, "production"), format!("production = true  {}", at(7)));
    assert_eq!(line(&printed, "shards"), "shards = 64  # default");
    let database = line(&printed, "database");
    assert!(database.ends_with("# env SHENGUAN_DATABASE") && database.contains("db.example.gov.cn"), "{database}");
    assert!(!printed.contains("s3cret"), "the password is hidden: {printed}");
    assert!(printed.contains("# jwt-keys =  # not set"), "{printed}");

    // What it prints is a configuration file that gives the same configuration.
    let again = dir.path().join("printed.toml");
    let without_secret = printed.replace(database, "");
    std::fs::write(&again, &without_secret).expect("write");
    let o = shenguan().args(["config", "check"]).arg(&again).output().expect("run");
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn every_problem_in_a_file_is_named_at_its_line_and_serve_does_not_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        "listen = \"127.0.0.1:0\"\nlisen = \"x\"\nidempotency-retention = \"一周\"\nshards = 5000\ncalendar-policy = \"maybe\"\n",
    )
    .expect("write");
    let o = shenguan().args(["config", "check"]).arg(&file).output().expect("run");
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    let name = file.display().to_string();
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 4, "{err}");
    assert!(lines[0].starts_with(&format!("{name}:2: unknown key \"lisen\" (did you mean \"listen\"?)")), "{err}");
    assert!(lines[1].starts_with(&format!("{name}:3: idempotency-retention: \"一周\":")), "{err}");
    assert!(lines[2].starts_with(&format!("{name}:4: shards: \"5000\":")), "{err}");
    assert!(lines[3].starts_with(&format!("{name}:5: calendar-policy: \"maybe\":")), "{err}");

    let db = dir.path().join("never.db");
    let o = shenguan().args(["serve", "--db"]).arg(&db).arg("--config").arg(&file).output().expect("run");
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains(&format!("{name}:2: unknown key")), "{}", text(&o));
    assert!(!db.exists(), "nothing was created");

    for hostile in ["\u{0}\u{1}binary", "[[x]]\na = 1\n", "listen = [\"a\", \"b\"]\n", "listen = { a = 1 }\n"] {
        std::fs::write(&file, hostile).expect("write");
        let o = shenguan().args(["config", "check"]).arg(&file).output().expect("run");
        assert_eq!(o.status.code(), Some(1), "{hostile:?}: {}", text(&o));
        assert!(String::from_utf8_lossy(&o.stderr).starts_with(&format!("{name}:1: ")), "{hostile:?}: {}", text(&o));
    }
    let o = shenguan().args(["config", "check"]).arg(dir.path().join("missing.toml")).output().expect("run");
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("missing.toml"), "{}", text(&o));
}

#[test]
fn a_server_runs_with_what_its_file_says() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("from-file.db");
    let file = dir.path().join("shenguan.toml");
    std::fs::write(
        &file,
        format!(
            "listen = \"127.0.0.1:0\"\ndb = {:?}\nvirtual-clock = \"2026-09-28T10:00:00+08:00\"\n",
            db.display().to_string()
        ),
    )
    .expect("write");
    let mut child = shenguan()
        .args(["serve", "--config"])
        .arg(&file)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let mut seen = Vec::new();
    let mut served = false;
    for l in lines {
        let l = l.expect("read");
        if l.contains("serving gRPC") {
            served = true;
            break;
        }
        seen.push(l);
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(served, "{seen:#?}");
    assert!(db.exists(), "the database is where the file says");
}

#[test]
fn the_shipped_files_are_valid_and_the_example_lists_every_option_with_its_default() {
    for file in ["ops/shenguan.example.toml", "ops/deploy/shenguan.toml"] {
        let o = shenguan().args(["config", "check"]).arg(repo(file)).output().expect("run");
        assert!(o.status.success(), "{file}: {}", text(&o));
    }
    let o = shenguan().args(["config", "print", "--explain"]).output().expect("run");
    assert!(o.status.success(), "{}", text(&o));
    let example = std::fs::read_to_string(repo("ops/shenguan.example.toml")).expect("read");
    assert_eq!(
        example,
        String::from_utf8_lossy(&o.stdout),
        "ops/shenguan.example.toml is `env -i shenguan config print --explain`: regenerate it"
    );
}
