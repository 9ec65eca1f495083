//! `scaler hub migrate|export|import` end to end: a SQLite hub that ran a job and holds a queued
//! one is stopped, exported and imported into a fresh PostgreSQL database; a replica on it serves
//! the finished job with its log, the same registration token lets a real agent in, and that
//! agent runs the job that was waiting. A second import into the now full database is refused,
//! and so is an export that was cut off.

use testkit::stores;

use std::process::Command;
use std::time::Duration;
use testkit::hub_process::scaler_binary;
use testkit::hub_process::start_agent;
use testkit::hub_process::HubProcess;
use testkit::wait_for;

/// `scaler hub ARGS…`: exit code and standard error.
fn scaler_hub(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(scaler_binary())
        .arg("hub")
        .args(args)
        .output()
        .expect("run scaler hub");
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (
        output.status.code().unwrap_or(-1),
        text(&output.stdout),
        text(&output.stderr),
    )
}

fn finished(hub: &HubProcess, id: &str) -> bool {
    hub.job(id)["state"] == "finished"
}

#[test]
fn a_sqlite_hub_moves_to_postgresql_through_export_and_import() {
    let mut sqlite = HubProcess::start(&[]);
    let done = sqlite.submit(&["echo moved-with-its-log"]);
    let agent = start_agent(&sqlite, &["--disconnect-after-job"]);
    wait_for("the first job to finish", Duration::from_secs(60), || {
        finished(&sqlite, &done)
    });
    drop(agent);
    let waiting = sqlite.submit(&["echo ran-after-the-move"]);
    let (admin, registration) = (sqlite.admin_token(), sqlite.registration_token());
    sqlite.kill_9();

    let dir = tempfile::tempdir().unwrap();
    let export = dir.path().join("hub.jsonl");
    let data_dir = sqlite.data_dir().to_str().unwrap().to_string();
    let export_path = export.to_str().unwrap();
    let (code, _, stderr) =
        scaler_hub(&["export", "--data-dir", &data_dir, "--output", export_path]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("jobs: 2"), "{stderr}");

    let url = stores::new_database_url();
    let (code, stdout, stderr) = scaler_hub(&["migrate", "--database", &url]);
    assert_eq!((code, stdout.trim()), (0, "schema version 1"), "{stderr}");
    // A cut-off export is refused; the database stays empty.
    let text = std::fs::read_to_string(&export).unwrap();
    let cut = dir.path().join("cut.jsonl");
    std::fs::write(&cut, &text[..text.len() / 2]).unwrap();
    let cut_path = cut.to_str().unwrap();
    let (code, _, stderr) = scaler_hub(&["import", "--database", &url, "--input", cut_path]);
    assert_ne!(code, 0, "a cut-off export: {stderr}");
    let (code, _, stderr) = scaler_hub(&["import", "--database", &url, "--input", export_path]);
    assert_eq!(code, 0, "{stderr}");
    let (code, _, stderr) = scaler_hub(&["import", "--database", &url, "--input", export_path]);
    assert!(
        code != 0 && stderr.contains("not empty"),
        "{code}: {stderr}"
    );

    let replica = HubProcess::start_with_database(&url, &admin, &registration, &[]);
    let job = replica.job(&done);
    assert_eq!(
        (job["state"].as_str(), job["result"].as_str()),
        (Some("finished"), Some("passed"))
    );
    let log = replica.admin_get(&format!("/api/v1/jobs/{done}/logs"));
    assert!(log.to_string().contains("moved-with-its-log"), "{log}");
    assert_eq!(replica.job(&waiting)["state"], "queued");
    let agent = start_agent(&replica, &["--disconnect-after-job"]);
    wait_for(
        "the waiting job to run on PostgreSQL",
        Duration::from_secs(60),
        || finished(&replica, &waiting),
    );
    drop(agent);
    let log = replica.admin_get(&format!("/api/v1/jobs/{waiting}/logs"));
    assert!(log.to_string().contains("ran-after-the-move"), "{log}");
}
