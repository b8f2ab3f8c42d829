//! The operator console in a real headless Chromium, driven over WebDriver
//! (Debian's `chromium` and `chromium-driver`, through fantoccini): log in
//! with a TOTP code computed here, create a destination, import a graph and
//! run a match through the command lines, find the job and the audience in
//! the console, revoke a key, and read those actions under the operator's
//! name in the audit page. Each page is saved as a PNG screenshot in
//! `target/tmp/console-screenshots/` (printed).
//!
//! Without `chromedriver` or `chromium` the test prints one line and
//! passes; with `CI=true` it fails instead.

mod common;

use common::console::{add_operator, Scenario};
use common::TestServer;
use fantoccini::{Client, ClientBuilder, Locator};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `chromedriver` on a free loopback port, killed on drop.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn installed(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The driver, or `None` (one line printed) when the browser is missing
/// outside CI.
fn start_driver() -> Option<Driver> {
    let missing: Vec<&str> = ["chromedriver", "chromium"]
        .into_iter()
        .filter(|p| !installed(p))
        .collect();
    if !missing.is_empty() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{missing:?} not installed but CI=true: the browser tests must run (apt-get install chromium chromium-driver)"
        );
        println!("console_browser: skipped, {missing:?} not installed (apt-get install chromium chromium-driver)");
        return None;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "chromedriver did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
    })
}

async fn browser(driver: &Driver, profile: &Path) -> Client {
    let caps = serde_json::json!({
        "browserName": "chrome",
        // The server's development certificate is self-signed.
        "acceptInsecureCerts": true,
        "goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,1000", format!("--user-data-dir={}", profile.display()),
            ],
        },
    });
    let serde_json::Value::Object(caps) = caps else {
        unreachable!()
    };
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a Chromium session")
}

/// Screenshots of one run.
struct Shots {
    dir: PathBuf,
    taken: Vec<String>,
}

impl Shots {
    async fn take(&mut self, c: &Client, name: &str) {
        let png = c.screenshot().await.expect("screenshot");
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        std::fs::write(self.dir.join(format!("{name}.png")), png).unwrap();
        self.taken.push(name.into());
    }
}

async fn fill(c: &Client, css: &str, text: &str) {
    c.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .send_keys(text)
        .await
        .unwrap();
}

async fn click(c: &Client, css: &str) {
    c.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .click()
        .await
        .unwrap();
}

async fn path_of(c: &Client) -> String {
    c.current_url().await.unwrap().path().to_string()
}

/// Longest wait for a page the browser is loading.
const PAGE_WAIT: Duration = Duration::from_secs(15);

/// Wait until the browser's URL satisfies `ready` (a click's navigation
/// finishes after `click` returns).
async fn wait_for_url(c: &Client, what: &str, ready: impl Fn(&url::Url) -> bool) {
    let deadline = Instant::now() + PAGE_WAIT;
    loop {
        let url = c.current_url().await.unwrap();
        if ready(&url) {
            return;
        }
        assert!(Instant::now() < deadline, "never reached {what}: at {url}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Wait until the page holds an element matching `locator`.
async fn wait_for(c: &Client, locator: Locator<'_>) -> fantoccini::elements::Element {
    c.wait()
        .at_most(PAGE_WAIT)
        .for_element(locator)
        .await
        .unwrap_or_else(|e| panic!("{locator:?} never appeared: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_works_through_the_console_in_chromium() {
    let Some(driver) = start_driver() else {
        return;
    };
    let started = Instant::now();
    let mut server = TestServer::start(&[("K", "50"), ("MIN_JOB_ROWS", "100")]);
    let mut ana = add_operator(&mut server, "ana");
    let mut shots = Shots {
        dir: PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots"),
        taken: Vec::new(),
    };
    std::fs::create_dir_all(&shots.dir).unwrap();
    let profile = server.path("chromium-profile");
    let c = browser(&driver, &profile).await;

    // Log in: the console sends an anonymous visitor to the form.
    c.goto(&format!("{}/console/", server.url)).await.unwrap();
    assert_eq!(path_of(&c).await, "/console/login");
    shots.take(&c, "01-login").await;
    fill(&c, "input[name=name]", "ana").await;
    fill(&c, "input[name=password]", &ana.password.clone()).await;
    fill(&c, "input[name=totp]", &ana.fresh_code()).await;
    click(&c, "form.login button").await;
    wait_for_url(&c, "the overview", |u| u.path() == "/console/").await;
    assert!(c
        .source()
        .await
        .unwrap()
        .contains("operator <strong>ana</strong>"));
    shots.take(&c, "02-overview-empty").await;

    // Create a destination; its key is shown once.
    c.goto(&format!("{}/console/principals", server.url))
        .await
        .unwrap();
    fill(&c, "form.inline input[name=name]", "dsp-browser").await;
    c.find(Locator::Css("select[name=role]"))
        .await
        .unwrap()
        .select_by_value("destination")
        .await
        .unwrap();
    click(&c, "form.inline button").await;
    let key = wait_for(&c, Locator::Css("pre.key"))
        .await
        .text()
        .await
        .unwrap();
    assert!(key.starts_with("obk_"), "{key}");
    shots.take(&c, "03-principal-created").await;

    // The operator's other tools: a graph and a match through the command lines.
    let advertiser = server.create("advertiser", "acme");
    let data = Scenario {
        persons: 300,
        email: |i| format!("browser{i}@example.com"),
        cookie_id: |i| format!("bck-{i}"),
    };
    data.import_and_match(&server, &advertiser, "dsp-browser", 260, 40, 0);
    assert_eq!(
        server.audiences(&key).len(),
        1,
        "the destination's key works"
    );

    // The job and the audience, as the console shows them.
    c.goto(&format!("{}/console/", server.url)).await.unwrap();
    shots.take(&c, "04-overview").await;
    c.goto(&format!("{}/console/graph", server.url))
        .await
        .unwrap();
    shots.take(&c, "05-graph").await;
    c.goto(&format!("{}/console/jobs", server.url))
        .await
        .unwrap();
    shots.take(&c, "06-jobs").await;
    click(&c, "td a[href^='/console/jobs/j-']").await;
    wait_for_url(&c, "the job", |u| u.path().starts_with("/console/jobs/j-")).await;
    let job = c.source().await.unwrap();
    assert!(
        job.contains("finished") && job.contains("Gold") && job.contains("delivered"),
        "{job}"
    );
    shots.take(&c, "07-job").await;
    click(&c, "td a[href^='/console/audiences/a-']").await;
    wait_for_url(&c, "the audience", |u| {
        u.path().starts_with("/console/audiences/a-")
    })
    .await;
    assert!(c.source().await.unwrap().contains("dsp-browser"));
    shots.take(&c, "08-audience").await;
    c.goto(&format!("{}/console/audiences", server.url))
        .await
        .unwrap();
    shots.take(&c, "09-audiences").await;
    c.goto(&format!("{}/console/quality", server.url))
        .await
        .unwrap();
    c.find(Locator::Css("figure.chart svg polyline"))
        .await
        .expect("a chart");
    shots.take(&c, "10-quality").await;
    c.goto(&format!("{}/console/privacy", server.url))
        .await
        .unwrap();
    shots.take(&c, "11-privacy").await;

    // Revoke the destination's key: the next pull is refused.
    let listed = server.json(
        &server.admin_key.clone(),
        &["admin", "principals", "list", "--json"],
    );
    let key_id = listed["principals"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == "dsp-browser")
        .and_then(|p| p["keys"][0]["key_id"].as_str())
        .expect("dsp-browser's key")
        .to_string();
    c.goto(&format!("{}/console/principals", server.url))
        .await
        .unwrap();
    click(&c, &format!("form:has(input[value='{key_id}']) button")).await;
    wait_for(
        &c,
        Locator::XPath("//span[contains(@class, 'badge') and text()='revoked']"),
    )
    .await;
    assert_eq!(path_of(&c).await, "/console/principals");
    shots.take(&c, "12-key-revoked").await;
    let refused = server.onboard(&key, &["audiences", "list", "--json"]);
    assert!(
        !refused.status.success(),
        "a revoked key still lists audiences"
    );

    // The audit page, searched for the operator: each action under its name.
    c.goto(&format!("{}/console/audit", server.url))
        .await
        .unwrap();
    fill(&c, "input[name=q]", "operator:ana").await;
    click(&c, "form.inline button").await;
    wait_for_url(&c, "the search", |u| {
        u.query().is_some_and(|q| q.contains("q="))
    })
    .await;
    let audit = c.source().await.unwrap();
    assert!(audit.contains("Chain verified"), "{audit}");
    for action in [
        "console.login",
        "principal.create.destination",
        "key.revoke",
    ] {
        assert!(
            audit.contains(&format!("<td>operator:ana</td><td>{action}</td>")),
            "{action} not under operator:ana: {audit}"
        );
    }
    shots.take(&c, "13-audit").await;

    // Logout ends the session.
    click(&c, "form.logout button").await;
    wait_for_url(&c, "the login form", |u| u.path() == "/console/login").await;
    c.goto(&format!("{}/console/jobs", server.url))
        .await
        .unwrap();
    assert_eq!(path_of(&c).await, "/console/login");
    c.close().await.unwrap();
    println!(
        "console_browser: {} screenshots in {} ({:.1} s)",
        shots.taken.len(),
        shots.dir.display(),
        started.elapsed().as_secs_f64()
    );
}
