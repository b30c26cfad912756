//! Delivery across a SIGKILL: a real `shenguan serve` process whose receiver is down commits
//! messages, is killed before it can deliver them, and delivers every one after a restart —
//! and the CLI's dead-letter and signature commands against the same server.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use integration_tests::receiver::{Answer, Receiver};

const SECRET: &str = "a shared secret for the test receiver";

struct Server {
    child: Child,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(db: &Path, outbound: &Path) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_shenguan"))
        .args(["serve", "--listen", "127.0.0.1:0", "--virtual-clock", "2026-09-28T10:00:00+08:00", "--db"])
        .arg(db)
        .arg("--outbound")
        .arg(outbound)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn serve");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let url = loop {
        let line = lines.next().expect("the server logs its address").expect("read");
        if let Some(addr) = line.split("addr=").nth(1).filter(|_| line.contains("serving gRPC")) {
            break format!("http://{}", addr.trim());
        }
    };
    std::thread::spawn(move || for _ in lines {});
    Server { child, url }
}

fn cli(server: &Server, db: &Path, args: &[&str]) -> Output {
    let mut token = db.file_name().expect("name").to_os_string();
    token.push(".dev-token");
    Command::new(env!("CARGO_BIN_EXE_shenguan"))
        .args(args)
        .env("SHENGUAN_SERVER", &server.url)
        .env("SHENGUAN_TOKEN_FILE", db.with_file_name(token))
        .env_remove("SHENGUAN_TOKEN")
        .output()
        .expect("run cli")
}

fn ok(o: Output) -> String {
    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "{text}");
    text
}

fn outbound_file(dir: &Path, addr: std::net::SocketAddr, max_attempts: u32) -> std::path::PathBuf {
    let secret = dir.join("hook.secret");
    std::fs::write(&secret, SECRET).expect("secret");
    let path = dir.join("outbound.toml");
    std::fs::write(
        &path,
        format!(
            "[delivery]\nmax_attempts = {max_attempts}\nbackoff_initial_ms = 20\nbackoff_max_ms = 100\n\n\
             [[destination]]\nname = \"platform\"\nkind = \"webhook\"\nurl = \"http://{addr}/hook\"\n\
             channels = [\"sms\"]\nsecret_file = {secret:?}\ntimeout_secs = 1\n"
        ),
    )
    .expect("outbound");
    path
}

/// Accepts `n` material-deferral cases from the README's example and moves the clock to their
/// reminders: one SMS each, committed.
fn cases_with_reminders(server: &Server, db: &Path, dir: &Path, n: usize) {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ops/examples/case-material-deferral.json");
    let mut json: serde_json::Value = serde_json::from_slice(&std::fs::read(example).expect("example")).expect("json");
    for i in 0..n {
        json["case_no"] = format!("K-{i}").into();
        let file = dir.join(format!("k{i}.json"));
        std::fs::write(&file, json.to_string()).expect("write");
        ok(cli(server, db, &["case", "accept", "-f", file.to_str().expect("path")]));
    }
    ok(cli(server, db, &["clock", "advance", "--to", "2026-10-08T09:00:00+08:00"]));
}

async fn outbox_keys(db: &Path) -> Vec<String> {
    let mut db = integration_tests::Db::open(db).await.expect("db");
    let mut keys: Vec<String> = db.outbox().await.expect("outbox").into_keys().collect();
    keys.sort();
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_committed_before_a_sigkill_are_delivered_after_the_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("k.db");
    // The receiver is down: nothing can be delivered before the kill.
    let addr = Receiver::start(|_, _| Answer::Ok).await.expect("receiver").stop().await;
    let outbound = outbound_file(dir.path(), addr, 1_000);
    let mut server = serve(&db, &outbound);
    cases_with_reminders(&server, &db, dir.path(), 5);
    let keys = outbox_keys(&db).await;
    assert_eq!(keys.len(), 5, "one reminder SMS per case, committed");
    server.child.kill().expect("SIGKILL");
    server.child.wait().expect("reaped");
    drop(server);

    let receiver = Receiver::start_on(addr, Box::new(|_, _| Answer::Ok)).await.expect("receiver back");
    let _server = serve(&db, &outbound);
    let accepted = receiver.wait_accepted(keys.len(), Duration::from_secs(60)).await.expect("every message");
    let mut got: Vec<String> = accepted.iter().map(|r| r.key.clone()).collect();
    got.sort();
    got.dedup();
    assert_eq!(got, keys);

    // The CLI checks a received signature as a receiver would; a changed body fails.
    let r = &accepted[0];
    let body = dir.path().join("body.json");
    std::fs::write(&body, &r.body).expect("body");
    let verify = |body: &Path| {
        Command::new(env!("CARGO_BIN_EXE_shenguan"))
            .args(["webhook", "verify", "--secret-file"])
            .arg(dir.path().join("hook.secret"))
            .args(["--timestamp", &r.timestamp, "--signature", &r.signature, "--body"])
            .arg(body)
            .output()
            .expect("verify")
    };
    let o = verify(&body);
    assert!(o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "valid", "{o:?}");
    let tampered = dir.path().join("tampered.json");
    std::fs::write(&tampered, String::from_utf8_lossy(&r.body).replace("K-", "X-")).expect("tampered");
    let o = verify(&tampered);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("does not match"), "{o:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_lists_dead_letters_and_retries_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("d.db");
    let receiver = Receiver::start(|_, _| Answer::Status(500)).await.expect("receiver");
    let outbound = outbound_file(dir.path(), receiver.addr, 2);
    let server = serve(&db, &outbound);
    cases_with_reminders(&server, &db, dir.path(), 1);
    receiver.wait_until(Duration::from_secs(60), |all| all.len() >= 2).await.expect("two attempts");
    let key = outbox_keys(&db).await.remove(0);
    // The dead letter is recorded shortly after the second attempt.
    let mut polls = 0;
    let listed = loop {
        let text = ok(cli(&server, &db, &["outbox", "dead"]));
        if text.contains(&key) {
            break text;
        }
        polls += 1;
        assert!(polls < 3_000, "no dead letter listed: {text}");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(listed.contains("platform") && listed.contains("HTTP 500"), "{listed}");
    receiver.set_script(|_, _| Answer::Ok);
    let text = ok(cli(&server, &db, &["outbox", "retry", &key]));
    assert!(text.contains("pending again"), "{text}");
    let accepted = receiver.wait_accepted(1, Duration::from_secs(60)).await.expect("delivered after the retry");
    assert_eq!(accepted[0].key, key);
    let o = cli(&server, &db, &["outbox", "retry", "no:such:key"]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("NOT_FOUND"), "{o:?}");
}
