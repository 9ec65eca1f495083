//! `scaler simulate` from the command line: a reproducible table, the time-series CSV, the PNG
//! plot, CSV traces, and clear errors for bad input.

use std::process::Command;

fn simulate(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(testkit::hub_process::scaler_binary())
        .arg("simulate")
        .args(args)
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The output without the line that reports how long the simulation took.
fn table_lines(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .filter(|l| !l.contains("simulated in") && !l.contains("written to"))
        .map(str::to_string)
        .collect()
}

#[test]
fn same_seed_same_table_plus_csv_and_plot() {
    let dir = tempfile::tempdir().unwrap();
    let (csv, png) = (dir.path().join("series.csv"), dir.path().join("plot.png"));
    let args = [
        "--trace",
        "steady",
        "--seed",
        "7",
        "--csv",
        csv.to_str().unwrap(),
        "--plot",
        png.to_str().unwrap(),
    ];
    let (code, first, stderr) = simulate(&args);
    assert_eq!(code, 0, "{stderr}");
    let (_, second, _) = simulate(&args);
    assert_eq!(table_lines(&first), table_lines(&second));
    for policy in ["flotilla", "semaphore", "buildkite"] {
        assert!(first.lines().any(|l| l.starts_with(policy)), "{first}");
    }
    let series = std::fs::read_to_string(&csv).unwrap();
    assert!(series.starts_with("policy,time_s,queued,running,instances,desired\n"));
    assert!(
        series
            .lines()
            .filter(|l| l.starts_with("buildkite,"))
            .count()
            > 60,
        "a row a minute"
    );
    let image = std::fs::read(&png).unwrap();
    assert_eq!(&image[..8], b"\x89PNG\r\n\x1a\n");
    assert!(
        image.len() > 10_000,
        "a real picture ({} bytes)",
        image.len()
    );
}

#[test]
fn csv_traces_replay_and_bad_input_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("trace.csv");
    std::fs::write(
        &trace,
        "submit_time,duration,agent_type\n0,60,default\n5,60,default\n3600,30,default\n",
    )
    .unwrap();
    let (code, stdout, stderr) =
        simulate(&["--trace", trace.to_str().unwrap(), "--policy", "flotilla"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("3 jobs"), "{stdout}");

    let (code, _, stderr) = simulate(&["--policy", "magic"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("unknown policy 'magic'"), "{stderr}");
    let (code, _, stderr) = simulate(&["--trace", "/no/such/trace.csv"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("neither a built-in scenario"), "{stderr}");
    std::fs::write(&trace, "submit_time,duration,agent_type\nsoon,60,default\n").unwrap();
    let (code, _, stderr) = simulate(&["--trace", trace.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(stderr.contains("bad submit_time"), "{stderr}");
}
