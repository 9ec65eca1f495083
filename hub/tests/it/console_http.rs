//! The web console over plain HTTP, without a browser: sign-in (a wrong token refused, the
//! cookie's attributes, no token in any URL or page), every action refused without the
//! session's CSRF token, sessions that end at sign-out, hostile job names, spec values and log
//! lines rendered as text, secret values masked, the jobs list's filters and pages, and every
//! page under 100 KB.

use crate::console_support::{serve, Served, ADMIN};
use protocol::{GpuGate, GpuGateCheck, GpuInfo, JobResult, JobSpec, RegisterRequest};
use reqwest::blocking::{Client, Response};
use reqwest::StatusCode;
use std::collections::BTreeMap;

/// A signed-in browser without the browser: its cookie and the CSRF token pages carry.
struct Browser {
    client: Client,
    url: String,
    cookie: String,
    csrf: String,
}

fn client() -> Client {
    Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

fn sign_in(served: &Served) -> Browser {
    let client = client();
    let answer = client
        .post(format!("{}/console/login", served.url))
        .form(&[("token", ADMIN)])
        .send()
        .unwrap();
    assert_eq!(answer.status(), StatusCode::SEE_OTHER);
    let cookie = answer.headers()["set-cookie"].to_str().unwrap().to_string();
    let cookie = cookie.split(';').next().unwrap().to_string();
    let mut browser = Browser {
        client,
        url: served.url.clone(),
        cookie,
        csrf: String::new(),
    };
    let overview = browser.get("/console").text().unwrap();
    browser.csrf = csrf_of(&overview);
    browser
}

/// The CSRF token in a page's forms.
fn csrf_of(page: &str) -> String {
    let start = page
        .find("name=\"csrf\" value=\"")
        .expect("a form with a CSRF token")
        + 19;
    page[start..start + page[start..].find('"').unwrap()].to_string()
}

impl Browser {
    fn get(&self, path: &str) -> Response {
        self.client
            .get(format!("{}{path}", self.url))
            .header("cookie", &self.cookie)
            .send()
            .unwrap()
    }

    fn post(&self, path: &str, form: &[(&str, &str)]) -> Response {
        self.client
            .post(format!("{}{path}", self.url))
            .header("cookie", &self.cookie)
            .form(form)
            .send()
            .unwrap()
    }

    fn page(&self, path: &str) -> String {
        let answer = self.get(path);
        assert_eq!(answer.status(), StatusCode::OK, "{path}");
        let body = answer.text().unwrap();
        assert!(body.len() < 100 * 1024, "{path} is {} bytes", body.len());
        body
    }
}

#[test]
fn sign_in_refuses_a_wrong_token_and_sets_a_strict_http_only_cookie() {
    let served = serve();
    let client = client();
    // The hub's own address leads to the console, which asks for a sign-in.
    let root = client.get(format!("{}/", served.url)).send().unwrap();
    assert_eq!(root.status(), StatusCode::SEE_OTHER);
    assert_eq!(root.headers()["location"], "/console");
    let console = client
        .get(format!("{}/console", served.url))
        .send()
        .unwrap();
    assert!(console.status().is_redirection(), "{}", console.status());
    let login = client
        .get(format!("{}/console/login", served.url))
        .send()
        .unwrap();
    assert_eq!(login.status(), StatusCode::OK);
    let csp = login.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(login.text().unwrap().contains("type=\"password\""));
    for wrong in ["", "not-the-token", &format!("{ADMIN}x")] {
        let refused = client
            .post(format!("{}/console/login", served.url))
            .form(&[("token", wrong)])
            .send()
            .unwrap();
        assert_eq!(refused.status(), StatusCode::UNAUTHORIZED, "{wrong:?}");
        assert!(refused.headers().get("set-cookie").is_none());
    }
    let accepted = client
        .post(format!("{}/console/login", served.url))
        .form(&[("token", ADMIN)])
        .send()
        .unwrap();
    assert_eq!(accepted.status(), StatusCode::SEE_OTHER);
    assert_eq!(accepted.headers()["location"], "/console");
    let cookie = accepted.headers()["set-cookie"].to_str().unwrap();
    for part in ["HttpOnly", "SameSite=Strict", "Path=/console"] {
        assert!(cookie.contains(part), "{cookie}");
    }
    assert!(!cookie.contains(ADMIN));
    // Without a session every page sends the browser to sign in.
    for path in [
        "/console",
        "/console/jobs",
        "/console/agents",
        "/console/jobs/new",
    ] {
        let answer = client.get(format!("{}{path}", served.url)).send().unwrap();
        assert_eq!(answer.status(), StatusCode::SEE_OTHER, "{path}");
        assert_eq!(answer.headers()["location"], "/console/login");
    }
    // The admin token appears in no page once signed in.
    let browser = sign_in(&served);
    for path in [
        "/console",
        "/console/jobs",
        "/console/agents",
        "/console/jobs/new",
    ] {
        assert!(!browser.page(path).contains(ADMIN), "{path}");
    }
}

#[test]
fn every_action_needs_the_sessions_csrf_token() {
    let served = serve();
    let browser = sign_in(&served);
    let _agent = served.linux_agent("csrf-agent");
    let job = served
        .hub
        .submit(JobSpec::from_commands("linux", &["sleep 60".into()]), 1)
        .unwrap();
    let stop = format!("/console/jobs/{}/stop", job.id);
    let actions: [(&str, Vec<(&str, &str)>); 4] = [
        (
            "/console/jobs",
            vec![("agent_type", "linux"), ("commands", "true")],
        ),
        (&stop, vec![]),
        ("/console/agents/csrf-agent/shutdown", vec![]),
        ("/console/logout", vec![]),
    ];
    for (path, form) in &actions {
        for csrf in [None, Some("wrong"), Some("")] {
            let mut fields = form.clone();
            if let Some(csrf) = csrf {
                fields.push(("csrf", csrf));
            }
            let answer = browser.post(path, &fields);
            assert_eq!(
                answer.status(),
                StatusCode::FORBIDDEN,
                "{path} with {csrf:?}"
            );
        }
    }
    assert_eq!(
        served.hub.list_jobs(None, 10).unwrap().len(),
        1,
        "nothing was submitted"
    );
    assert!(!served.hub.job(&job.id).unwrap().state.is_finished());
    // With the token each action works.
    let csrf = browser.csrf.as_str();
    let submitted = browser.post(
        "/console/jobs",
        &[
            ("csrf", csrf),
            ("agent_type", "linux"),
            ("commands", "echo hi\nmake"),
        ],
    );
    assert_eq!(submitted.status(), StatusCode::SEE_OTHER);
    assert_eq!(served.hub.list_jobs(None, 10).unwrap().len(), 2);
    let stopped = browser.post(&stop, &[("csrf", csrf)]);
    assert_eq!(stopped.status(), StatusCode::SEE_OTHER);
    assert!(
        served.hub.job(&job.id).unwrap().state.is_finished(),
        "a queued job stops at once"
    );
    let shutdown = browser.post("/console/agents/csrf-agent/shutdown", &[("csrf", csrf)]);
    assert_eq!(shutdown.status(), StatusCode::SEE_OTHER);
    // Sign-out ends the session: the same cookie no longer opens a page.
    let out = browser.post("/console/logout", &[("csrf", csrf)]);
    assert_eq!(out.status(), StatusCode::SEE_OTHER);
    assert!(out.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));
    let after = browser.get("/console");
    assert_eq!(after.status(), StatusCode::SEE_OTHER);
    assert_eq!(after.headers()["location"], "/console/login");
}

const HOSTILE: &str = "<script>alert(\"x\")</script>'\"&";

#[test]
fn hostile_names_spec_values_and_log_lines_render_as_text_and_secrets_are_masked() {
    let served = serve();
    let browser = sign_in(&served);
    let mut spec = JobSpec::from_commands("linux", &[format!("echo {HOSTILE}")]);
    spec.name = format!("name {HOSTILE}");
    spec.env = BTreeMap::from([("API_KEY".to_string(), "sup3r-s3cret-value".to_string())]);
    let job = served.hub.submit(spec, served.now()).unwrap();
    let mut agent = served.linux_agent("hostile-agent");
    served.take_job(&mut agent);
    served.command(
        &mut agent,
        &format!("echo {HOSTILE}"),
        &format!("\u{1b}[31m{HOSTILE}\u{1b}[0m plain\n"),
        0,
    );
    let page = browser.page(&format!("/console/jobs/{}", job.id));
    assert!(!page.contains("<script>alert"), "raw markup in the page");
    assert!(page.contains("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;"));
    assert!(
        page.contains("<span class=\"f1\">&lt;script&gt;"),
        "ANSI red rendered as a class"
    );
    assert!(!page.contains('\u{1b}'));
    assert!(page.contains("API_KEY"));
    assert!(
        !page.contains("sup3r-s3cret-value"),
        "secret values are masked"
    );
    let list = browser.page("/console/jobs");
    assert!(!list.contains("<script>alert") && list.contains("name &lt;script&gt;"));
    // The live endpoint is JSON (never rendered as a page): its output HTML is escaped, and
    // its plain-text fields (the command) are set as text by the script.
    let follow = browser.get(&format!("/console/jobs/{}/log?from=0", job.id));
    assert!(follow.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let follow: serde_json::Value = follow.json().unwrap();
    let items = follow["items"].as_array().unwrap();
    let out = items.iter().find(|item| item["t"] == "out").unwrap()["html"]
        .as_str()
        .unwrap();
    assert!(
        out.starts_with("<span class=\"f1\">&lt;script&gt;alert(&quot;x&quot;)"),
        "{out}"
    );
    let command = items.iter().find(|item| item["t"] == "cmd").unwrap();
    assert_eq!(command["text"], format!("echo {HOSTILE}"));
    // The raw log is text/plain.
    let raw = browser.get(&format!("/console/jobs/{}/log.txt", job.id));
    assert!(raw.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    assert!(raw.text().unwrap().contains(HOSTILE));
}

#[test]
fn the_jobs_list_filters_and_pages_newest_first() {
    let served = serve();
    let browser = sign_in(&served);
    for index in 0..120 {
        let mut spec = JobSpec::from_commands("linux", &["true".into()]);
        spec.name = format!(
            "{}-{index:03}",
            if index % 2 == 0 { "build" } else { "test" }
        );
        served.hub.submit(spec, served.now()).unwrap();
    }
    let first = browser.page("/console/jobs");
    assert!(
        first.find("test-119").unwrap() < first.find("build-118").unwrap(),
        "newest first"
    );
    assert_eq!(first.matches("<tr>").count() - 1, 50, "one page");
    let next = first.find("rel=\"next\" href=\"").unwrap() + 17;
    let next = first[next..next + first[next..].find('"').unwrap()].replace("&amp;", "&");
    let second = browser.page(&next);
    assert!(
        second.contains("test-069") && !second.contains("test-071"),
        "the second page"
    );
    let builds = browser.page("/console/jobs?name=BUILD-0&state=queued");
    assert!(
        builds.contains("build-098") && !builds.contains("test-"),
        "filtered by name"
    );
    assert_eq!(builds.matches("<tr>").count() - 1, 50);
    let none = browser.page("/console/jobs?state=running");
    assert!(none.contains("No jobs match."));
}

#[test]
fn the_overview_and_agents_pages_show_the_queue_and_the_fleet() {
    let served = serve();
    let browser = sign_in(&served);
    let mut agent = served.linux_agent("worker-1");
    for _ in 0..3 {
        let spec = JobSpec::from_commands("linux", &["true".into()]);
        served.hub.submit(spec, served.now()).unwrap();
    }
    served.take_job(&mut agent);
    served.hub.sample_history(served.now());
    let overview = browser.page("/console");
    let row = &overview[overview.find("data-agent-type=\"linux\"").unwrap()..];
    assert!(
        row.contains("<td class=\"queued\">2</td><td class=\"running\">1</td>"),
        "{row}"
    );
    assert!(overview.contains("<polyline"), "the chart");
    let agents = browser.page("/console/agents");
    assert!(agents.contains("worker-1") && agents.contains(&agent.job_id));
    served.command(&mut agent, "true", "", 0);
    served.finish(&mut agent, JobResult::Passed);
    let finished = browser.page("/console/agents");
    assert!(!finished.contains(&format!("href=\"/console/jobs/{}\"", agent.job_id)));
}

/// The agents page shows each agent's GPUs and its health gate's result (each check in the
/// cell's title); a job whose machine failed under it says so on its page, and where it went
/// next (its reason before the retry is the control: no "retried on" while it waits).
#[test]
fn gpus_the_health_gate_and_a_gpu_fault_retried_elsewhere_are_shown() {
    let served = serve();
    let browser = sign_in(&served);
    let gpu = GpuInfo {
        name: "NVIDIA A10G".into(),
        ..GpuInfo::default()
    };
    let check = |name: &str, detail: &str| GpuGateCheck {
        name: name.into(),
        passed: true,
        detail: detail.into(),
    };
    let mut first = served.linux_agent_with(RegisterRequest {
        name: "i-0first".into(),
        flotilla_gpus: vec![gpu.clone(), gpu],
        flotilla_gpu_gate: Some(GpuGate {
            passed: true,
            checks: vec![
                check("GPU count", "2 of 2 NVIDIA A10G"),
                check("ECC", "no uncorrectable errors"),
            ],
        }),
        ..RegisterRequest::default()
    });
    let agents = browser.page("/console/agents");
    assert!(agents.contains("2 × NVIDIA A10G"), "{agents}");
    assert!(agents.contains("health gate passed (2 checks)"), "{agents}");
    assert!(
        agents.contains("ok GPU count: 2 of 2 NVIDIA A10G"),
        "{agents}"
    );

    let spec = JobSpec::from_commands("linux", &["train".into()]);
    let job = served.hub.submit(spec, served.now()).unwrap();
    served.take_job(&mut first);
    let fault = "GPU fault on i-0first: Xid 79 on PCI 0000:00:1e (GPU has fallen off the bus)";
    served.fault(&mut first, fault);
    let waiting = browser.page(&format!("/console/jobs/{}", job.id));
    assert!(
        waiting.contains(&format!("re-queued: {fault}")),
        "{waiting}"
    );
    assert!(!waiting.contains("retried on"), "{waiting}");
    let mut second = served.linux_agent("i-0second");
    served.take_job(&mut second);
    let page = browser.page(&format!("/console/jobs/{}", job.id));
    assert!(
        page.contains(&format!("{fault}; retried on i-0second")),
        "{page}"
    );
}

#[test]
fn a_long_log_keeps_the_job_page_small_and_the_rest_follows() {
    let served = serve();
    let browser = sign_in(&served);
    let job = served
        .hub
        .submit(JobSpec::from_commands("linux", &["yes".into()]), 1)
        .unwrap();
    let mut agent = served.linux_agent("chatty");
    served.take_job(&mut agent);
    let line = format!("{}\n", "y".repeat(999));
    for _ in 0..4 {
        let output = line.repeat(100);
        served.command(&mut agent, "yes", &output, 0);
    }
    // `page` checks the 100 KB bound.
    let page = browser.page(&format!("/console/jobs/{}", job.id));
    let next = page.find("data-next=\"").unwrap() + 11;
    let next: i64 = page[next..next + page[next..].find('"').unwrap()]
        .parse()
        .unwrap();
    assert!(next > 1 && next < 13, "the first page stops early: {next}");
    let rest = browser.get(&format!("/console/jobs/{}/log?from={next}", job.id));
    let rest: serde_json::Value = rest.json().unwrap();
    assert_eq!(rest["next"], 13, "the script gets the rest");
}

#[test]
fn the_instances_launch_time_from_its_identity_document_is_on_the_timeline() {
    let served = serve();
    let browser = sign_in(&served);
    let spec = JobSpec::from_commands("gpu", &["nvidia-smi".into()]);
    let job = served.hub.submit(spec, served.now()).unwrap();
    // Launched after the job was queued (pendingTime), registered later.
    let launched = served.now() + 1;
    served.clock.advance(2);
    let mut agent = served.gpu_agent("i-0http0000000001", launched);
    served.take_job(&mut agent);
    let page = browser.page(&format!("/console/jobs/{}", job.id));
    let at = jiff::Timestamp::from_second(launched).unwrap();
    let shown = at.strftime("%Y-%m-%d %H:%M:%SZ").to_string();
    let milestone = format!("<dt>instance launched</dt><dd><time datetime=\"{at}\">{shown}</time>");
    assert!(page.contains(&milestone), "{page}");
    for phase in ["waiting for a machine", "machine booting"] {
        assert!(page.contains(&format!("data-phase=\"{phase}\"")), "{phase}");
    }
}

#[test]
fn an_agent_with_a_hostile_name_is_listed_as_text_and_can_be_shut_down() {
    let served = serve();
    let browser = sign_in(&served);
    let name = "<b>odd/name?x=1&y</b>";
    served.linux_agent(name);
    let page = browser.page("/console/agents");
    assert!(!page.contains("<b>odd") && page.contains("&lt;b&gt;odd/name?x=1&amp;y&lt;/b&gt;"));
    let action = "/console/agents/%3Cb%3Eodd%2Fname%3Fx%3D1%26y%3C%2Fb%3E/shutdown";
    assert!(page.contains(&format!("action=\"{action}\"")), "{page}");
    let answer = browser.post(action, &[("csrf", browser.csrf.as_str())]);
    assert_eq!(answer.status(), StatusCode::SEE_OTHER);
}
