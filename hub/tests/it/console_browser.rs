//! The web console in a real browser: headless Chromium driven over WebDriver (Debian's
//! `chromium` and `chromium-driver`; `.ci/run` installs them). One session walks what a person
//! does: a wrong token refused, sign in, watch the queue rise as jobs arrive (the overview
//! updates itself), submit a job from the form, open it while it runs and see its log lines
//! arrive live, stop it, read the timeline of a finished job with every phase (the instance's
//! launch time from its identity document), see hostile text render as text, an action without
//! the CSRF token refused, sign out. Screenshots of the main pages are written under
//! `target/` (cargo's test scratch directory), or to `docs/console/` (the README shows one)
//! when `FLOTILLA_UPDATE_SCREENSHOTS=1`: a test run leaves the tree as it found it.

use crate::console_support::{serve, Served, ADMIN};
use fantoccini::elements::Element;
use fantoccini::key::Key;
use fantoccini::{Client, ClientBuilder, Locator};
use protocol::{JobResult, JobSpec, JobState, LogEvent, SyncAction};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// chromedriver on a port of its own, killed (with the browsers it started) when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    fn start() -> Driver {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        // Its own process group: dropping the driver ends Chromium's helpers too.
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver is installed (apt-get install chromium chromium-driver)");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "chromedriver did not start listening"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn browser(driver: &Driver) -> Client {
    let mut capabilities = serde_json::Map::new();
    let arguments = [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,900",
    ];
    capabilities.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({ "args": arguments }),
    );
    // The workspace links two rustls crypto providers; the WebDriver client takes ring's.
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    ClientBuilder::rustls()
        .unwrap()
        .capabilities(capabilities)
        .connect(&driver.url)
        .await
        .expect("a Chromium session")
}

/// Waits until `check` holds, re-reading the page (up to 20 s).
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the browser is at `path` (after a click that navigates).
async fn at_path(client: &Client, path: &str) {
    eventually(&format!("the browser at {path}"), || async {
        client
            .current_url()
            .await
            .is_ok_and(|url| url.path() == path)
            && client.find(Locator::Css("main")).await.is_ok()
    })
    .await;
}

async fn text(client: &Client, css: &str) -> String {
    match client.find(Locator::Css(css)).await {
        Ok(element) => element.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// All the text in an element, shown or folded away.
async fn text_content(client: &Client, css: &str) -> String {
    match client.find(Locator::Css(css)).await {
        Ok(element) => element
            .prop("textContent")
            .await
            .ok()
            .flatten()
            .unwrap_or_default(),
        Err(_) => String::new(),
    }
}

async fn screenshot(client: &Client, name: &str) {
    let dir = match std::env::var("FLOTILLA_UPDATE_SCREENSHOTS").as_deref() {
        Ok("1") => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/console"),
        _ => PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console"),
    };
    std::fs::create_dir_all(&dir).unwrap();
    let png = client.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "{name}: not a PNG");
    std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
}

async fn field(client: &Client, css: &str) -> Element {
    client.find(Locator::Css(css)).await.unwrap()
}

async fn type_into(client: &Client, css: &str, text: &str) {
    field(client, css).await.send_keys(text).await.unwrap();
}

async fn click(client: &Client, css: &str) {
    field(client, css).await.click().await.unwrap();
}

/// Opens `path` of the served hub.
async fn goto(client: &Client, served: &Served, path: &str) {
    client.goto(&format!("{}{path}", served.url)).await.unwrap();
}

async fn sign_in(client: &Client, served: &Served) {
    // Without a session the console sends the browser to sign in.
    goto(client, served, "/console").await;
    at_path(client, "/console/login").await;
    type_into(client, "#token", "not-the-admin-token").await;
    click(client, "form.login button").await;
    eventually("the wrong token refused", || async {
        text(client, "p.alert")
            .await
            .contains("not the hub's admin token")
    })
    .await;
    type_into(client, "#token", ADMIN).await;
    click(client, "form.login button").await;
    at_path(client, "/console").await;
    assert!(!client.source().await.unwrap().contains(ADMIN));
}

/// The overview's queued count for `agent_type`, as the page shows it now.
async fn queued(client: &Client, agent_type: &str) -> String {
    text(
        client,
        &format!("tr[data-agent-type='{agent_type}'] td.queued"),
    )
    .await
}

async fn watch_the_queue_rise(client: &Client, served: &Served) {
    assert_eq!(queued(client, "linux").await, "0");
    // Keyboard first: the first Tab reaches the skip link.
    type_into(client, "body", &char::from(Key::Tab).to_string()).await;
    let focused = client.active_element().await.unwrap().text().await.unwrap();
    assert_eq!(focused, "Skip to content");
    for index in 0..3 {
        let mut spec = JobSpec::from_commands("linux", &["make".into()]);
        spec.name = format!("waiting-{index}");
        served.hub.submit(spec, served.now()).unwrap();
    }
    // No reload: the page's script refreshes the numbers.
    eventually("the overview shows 3 queued", || async {
        queued(client, "linux").await == "3"
    })
    .await;
    served.hub.sample_history(served.now());
    client.refresh().await.unwrap();
    screenshot(client, "overview").await;
}

/// Submits a job from the form; returns its id (from the page it lands on).
async fn submit_from_the_form(client: &Client, served: &Served) -> String {
    goto(client, served, "/console/jobs/new").await;
    type_into(client, "#name", "from the form").await;
    click(client, "#agent_type option[value='linux']").await;
    type_into(client, "#commands", "make test").await;
    click(client, "form.submit button[type=submit]").await;
    eventually("the new job's page", || async {
        let path = client.current_url().await.map(|url| url.path().to_string());
        path.is_ok_and(|path| path.starts_with("/console/jobs/") && path != "/console/jobs/new")
    })
    .await;
    let url = client.current_url().await.unwrap();
    assert_eq!(text(client, "h1").await, "from the form");
    url.path().rsplit('/').next().unwrap().to_string()
}

async fn follow_a_running_job_and_stop_it(client: &Client, served: &Served) {
    let mut agent = served.linux_agent("runner-1");
    // The oldest queued job goes first.
    served.take_job(&mut agent);
    goto(client, served, &format!("/console/jobs/{}", agent.job_id)).await;
    assert_eq!(text(client, "#job-state").await, "running");
    for line in 1..=3 {
        let output = format!("\u{1b}[32mlive line {line}\u{1b}[0m\n");
        served.command(&mut agent, &format!("step {line}"), &output, 0);
        let expected = format!("live line {line}");
        eventually(&expected, || async {
            text_content(client, "#log-view").await.contains(&expected)
        })
        .await;
    }
    assert_eq!(
        text_content(client, "#log-view details:last-of-type span.f2").await,
        "live line 3"
    );
    // A command that runs stays unfolded: the next one's output shows as it arrives.
    let t = served.now();
    served.push(
        &mut agent,
        &[
            LogEvent::CmdStarted {
                timestamp: t,
                directive: "make test".into(),
            },
            LogEvent::CmdOutput {
                timestamp: t,
                output: "\u{1b}[1mtest result: ok\u{1b}[0m\n".into(),
            },
        ],
    );
    eventually("the running command's output, visible", || async {
        text(client, "#log-view details[open] pre")
            .await
            .contains("test result: ok")
    })
    .await;
    let scroll = "document.getElementById('log').scrollIntoView();";
    client.execute(scroll, vec![]).await.unwrap();
    screenshot(client, "job-running").await;
    click(client, "form.stop button").await;
    eventually("the job shows stopping", || async {
        text(client, "#job-state").await == "stopping"
    })
    .await;
    assert_eq!(served.running_sync(&agent), SyncAction::StopJob);
    served.finish(&mut agent, JobResult::Stopped);
    client.refresh().await.unwrap();
    eventually("the job shows stopped", || async {
        text(client, "#job-state").await == "stopped"
    })
    .await;
}

/// A GPU job whose every phase takes a second: queued, its instance launched, its agent
/// registered, assigned, started, finished.
async fn timeline_of_a_finished_job(client: &Client, served: &Served) {
    let pause = || served.clock.advance(1);
    let mut spec = JobSpec::from_commands("gpu", &["nvidia-smi".into()]);
    spec.name = "train".into();
    let job = served.hub.submit(spec, served.now()).unwrap();
    pause();
    let launched = served.now();
    pause();
    let mut agent = served.gpu_agent("i-0console00000001", launched);
    pause();
    served.assign(&mut agent);
    pause();
    served.start(&mut agent);
    assert_eq!(served.running_sync(&agent), SyncAction::Continue);
    pause();
    served.command(&mut agent, "nvidia-smi", "GPU 0: NVIDIA H100\n", 0);
    served.finish(&mut agent, JobResult::Passed);
    let finished = served.hub.job(&job.id).unwrap();
    assert_eq!(finished.state, JobState::Finished, "{finished:?}");
    goto(client, served, &format!("/console/jobs/{}", job.id)).await;
    let mut phases = Vec::new();
    for item in client.find_all(Locator::Css("ul.phases li")).await.unwrap() {
        phases.push(item.attr("data-phase").await.unwrap().unwrap_or_default());
    }
    let expected = [
        "waiting for a machine",
        "machine booting",
        "assigning",
        "starting",
        "running",
    ];
    assert_eq!(phases, expected);
    let milestones = text(client, "dl.milestones").await;
    for moment in [
        "queued",
        "instance launched",
        "agent registered",
        "assigned",
        "started",
        "finished",
    ] {
        assert!(milestones.contains(moment), "{moment} in {milestones}");
    }
    screenshot(client, "job-finished").await;
}

/// No script of a job's ran in the page.
async fn not_pwned(client: &Client) -> bool {
    let answer = client
        .execute("return window.pwned === undefined;", vec![])
        .await;
    answer.unwrap() == serde_json::json!(true)
}

async fn hostile_text_stays_text(client: &Client, served: &Served) {
    let hostile = "<img src=x onerror=\"window.pwned=1\"><script>window.pwned=1</script>\u{1b}[31m";
    let mut spec = JobSpec::from_commands("linux", &[format!("echo '{hostile}'")]);
    spec.name = hostile.into();
    let job = served.hub.submit(spec, served.now()).unwrap();
    goto(client, served, &format!("/console/jobs/{}", job.id)).await;
    assert_eq!(text(client, "h1").await, hostile);
    assert!(client
        .find_all(Locator::Css("main img, main script"))
        .await
        .unwrap()
        .is_empty());
    assert!(not_pwned(client).await);
    goto(client, served, "/console/jobs").await;
    assert!(text(client, "table.jobs").await.contains(hostile));
    assert!(not_pwned(client).await);
    screenshot(client, "jobs").await;
}

async fn an_action_without_csrf_is_refused(client: &Client) {
    let script = "return fetch('/console/jobs', {method: 'POST', body: new URLSearchParams(\
                  {agent_type: 'linux', commands: 'true'})}).then((r) => r.status);";
    let status = client.execute(script, vec![]).await.unwrap();
    assert_eq!(status, serde_json::json!(403));
}

async fn sign_out(client: &Client, served: &Served) {
    goto(client, served, "/console/agents").await;
    screenshot(client, "agents").await;
    click(client, "form.signout button").await;
    at_path(client, "/console/login").await;
    // Without a session the console sends the browser to sign in.
    goto(client, served, "/console").await;
    at_path(client, "/console/login").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_uses_the_console_in_chromium() {
    let served = serve();
    let driver = Driver::start();
    let client = browser(&driver).await;
    let walk = async {
        sign_in(&client, &served).await;
        watch_the_queue_rise(&client, &served).await;
        let submitted = submit_from_the_form(&client, &served).await;
        let submitted = served.hub.job(&submitted).unwrap();
        assert_eq!(
            (submitted.state, submitted.agent_type.as_str()),
            (JobState::Queued, "linux")
        );
        follow_a_running_job_and_stop_it(&client, &served).await;
        timeline_of_a_finished_job(&client, &served).await;
        hostile_text_stays_text(&client, &served).await;
        an_action_without_csrf_is_refused(&client).await;
        sign_out(&client, &served).await;
    };
    // The browser is closed whether the walk passes or not.
    let outcome = tokio::time::timeout(Duration::from_secs(180), walk).await;
    let _ = client.close().await;
    drop(driver);
    outcome.expect("the walk finished in time");
}
