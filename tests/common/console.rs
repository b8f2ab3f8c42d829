//! The operator console from a test: an operator made with the real
//! `onboard-server operator add`, codes computed from its otpauth URI as an
//! authenticator app would, and a small HTTP client that keeps the
//! console's cookies itself (so tests see every `Set-Cookie` as sent) and
//! never follows redirects.

use super::TestServer;
use reqwest::blocking::{Client, Response};
use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use totp_rs::TOTP;

/// A console operator's credentials, as `operator add` printed them.
pub struct ConsoleOperator {
    pub name: String,
    pub password: String,
    pub otpauth_uri: String,
    totp: TOTP,
    /// The last step a code was made for: each step logs in once.
    last_step: u64,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

impl ConsoleOperator {
    /// The code of the current step offset by `offset` steps.
    pub fn code_at(&self, offset: i64) -> String {
        let step = (now() / 30) as i64 + offset;
        self.totp.generate(step as u64 * 30)
    }

    /// A code of a step no earlier code used: the current step, else the
    /// next (both stay in the server's ±1 window if a step boundary passes
    /// before it checks); waits, bounded, when both are used.
    pub fn fresh_code(&mut self) -> String {
        let deadline = Instant::now() + Duration::from_secs(70);
        loop {
            let current = now() / 30;
            let step = (self.last_step + 1).max(current);
            if step <= current + 1 {
                self.last_step = step;
                return self.totp.generate(step * 30);
            }
            assert!(Instant::now() < deadline, "no fresh TOTP step");
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// A code that matches no step of the window.
    pub fn wrong_code(&self) -> String {
        let window: Vec<String> = (-1..=1).map(|o| self.code_at(o)).collect();
        (0..1_000_000)
            .map(|n| format!("{n:06}"))
            .find(|c| !window.contains(c))
            .unwrap()
    }
}

/// `onboard-server operator add NAME`: stops the server (sled allows one
/// process per store), adds, restarts.
pub fn add_operator(server: &mut TestServer, name: &str) -> ConsoleOperator {
    server.stop();
    let out = server.server_cmd(&[
        "operator",
        "add",
        name,
        "--data-dir",
        server.data_dir.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "operator add: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    server.serve();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "password and URI on two lines: {stdout}");
    let (password, uri) = (lines[0].to_string(), lines[1].to_string());
    assert!(uri.starts_with("otpauth://totp/"), "{uri}");
    ConsoleOperator {
        name: name.into(),
        password,
        totp: TOTP::from_url(&uri).expect("an RFC 6238 URI"),
        otpauth_uri: uri,
        last_step: 0,
    }
}

/// One answer: status, headers of interest, body.
pub struct Answer {
    pub status: u16,
    pub location: Option<String>,
    pub set_cookies: Vec<String>,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

/// A cookie-keeping, non-redirecting client of the console.
pub struct ConsoleClient {
    client: Client,
    pub base: String,
    pub cookies: BTreeMap<String, String>,
}

impl ConsoleClient {
    pub fn new(server: &TestServer) -> Self {
        let pem = std::fs::read(&server.ca).unwrap();
        let client = Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        Self {
            client,
            base: server.url.clone(),
            cookies: BTreeMap::new(),
        }
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn answer(&mut self, resp: Response) -> Answer {
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let set_cookies: Vec<String> = headers
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect();
        for c in &set_cookies {
            let pair = c.split(';').next().unwrap();
            let (k, v) = pair.split_once('=').unwrap();
            if v.is_empty() || c.contains("Max-Age=0") {
                self.cookies.remove(k);
            } else {
                self.cookies.insert(k.into(), v.into());
            }
        }
        Answer {
            status,
            location: headers
                .get("location")
                .map(|v| v.to_str().unwrap().to_string()),
            set_cookies,
            headers,
            body: resp.text().unwrap_or_default(),
        }
    }

    pub fn get(&mut self, path: &str) -> Answer {
        let resp = self
            .client
            .get(format!("{}{path}", self.base))
            .header("cookie", self.cookie_header())
            .send()
            .expect("GET");
        self.answer(resp)
    }

    /// GET with a bearer API key and no cookie.
    pub fn get_with_bearer(&mut self, path: &str, key: &str) -> Answer {
        let resp = self
            .client
            .get(format!("{}{path}", self.base))
            .bearer_auth(key)
            .send()
            .expect("GET");
        self.answer(resp)
    }

    pub fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Answer {
        let resp = self
            .client
            .post(format!("{}{path}", self.base))
            .header("cookie", self.cookie_header())
            .form(form)
            .send()
            .expect("POST");
        self.answer(resp)
    }

    /// Open the login form and submit it.
    pub fn login_with(&mut self, name: &str, password: &str, code: &str) -> Answer {
        let form = self.get("/console/login");
        assert_eq!(form.status, 200, "{}", form.body);
        let csrf = csrf_of(&form.body);
        self.post(
            "/console/login",
            &[
                ("name", name),
                ("password", password),
                ("totp", code),
                ("csrf", &csrf),
            ],
        )
    }

    /// Log in with a fresh code; asserts it worked.
    pub fn login(&mut self, op: &mut ConsoleOperator) -> Answer {
        let code = op.fresh_code();
        let a = self.login_with(&op.name.clone(), &op.password.clone(), &code);
        assert_eq!(a.status, 303, "login failed: {}", a.body);
        assert_eq!(a.location.as_deref(), Some("/console/"));
        a
    }

    /// The CSRF token of the page at `path` (its first form).
    pub fn csrf(&mut self, path: &str) -> String {
        let page = self.get(path);
        assert_eq!(page.status, 200, "{path}: {}", page.body);
        csrf_of(&page.body)
    }
}

/// The value of the first `name="csrf"` field of a page.
pub fn csrf_of(html: &str) -> String {
    let doc = scraper::Html::parse_document(html);
    let sel = scraper::Selector::parse(r#"input[name="csrf"]"#).unwrap();
    doc.select(&sel)
        .next()
        .and_then(|e| e.value().attr("value"))
        .unwrap_or_else(|| panic!("no CSRF field in {html}"))
        .to_string()
}

/// Every `href` to a console page in `html`.
pub fn console_links(html: &str) -> Vec<String> {
    let doc = scraper::Html::parse_document(html);
    let sel = scraper::Selector::parse("a[href]").unwrap();
    doc.select(&sel)
        .filter_map(|e| e.value().attr("href"))
        .filter(|h| h.starts_with("/console/"))
        .map(str::to_string)
        .collect()
}

/// The test data of a console scenario: who has which email and cookie ID.
pub struct Scenario {
    /// Persons in the graph, `person-0`…
    pub persons: usize,
    /// Their emails.
    pub email: fn(usize) -> String,
    /// Their cookie IDs at the destination.
    pub cookie_id: fn(usize) -> String,
}

impl Scenario {
    /// Import the graph (emails, and cookies at `destination`), then have
    /// `advertiser_key` match the first `members` persons plus `strangers`
    /// unknown emails and `invalid` malformed ones, all in segment `Gold`.
    pub fn import_and_match(
        &self,
        server: &TestServer,
        advertiser_key: &str,
        destination: &str,
        members: usize,
        strangers: usize,
        invalid: usize,
    ) {
        let (ids, cookies, crm) = (
            server.path("ids.csv"),
            server.path("cookies.csv"),
            server.path("crm.csv"),
        );
        let mut id_lines = String::from("person_id,kind,value\n");
        let mut cookie_lines = String::from("person_id,destination,cookie_id\n");
        for i in 0..self.persons {
            id_lines.push_str(&format!("person-{i},email,{}\n", (self.email)(i)));
            cookie_lines.push_str(&format!(
                "person-{i},{destination},{}\n",
                (self.cookie_id)(i)
            ));
        }
        std::fs::write(&ids, id_lines).unwrap();
        std::fs::write(&cookies, cookie_lines).unwrap();
        server.import(&ids, Some(&cookies));
        let mut crm_lines = String::from("email,segment\n");
        for i in 0..members {
            crm_lines.push_str(&format!("{},Gold\n", (self.email)(i)));
        }
        for j in 0..strangers {
            crm_lines.push_str(&format!("nobody{j}@else.example,Gold\n"));
        }
        for j in 0..invalid {
            crm_lines.push_str(&format!("not-an-email-{j},Gold\n"));
        }
        std::fs::write(&crm, crm_lines).unwrap();
        let key = server.path("advertiser.key");
        server.ok(advertiser_key, &["keygen", "--out", key.to_str().unwrap()]);
        let out = super::match_emails(server, advertiser_key, &key, &crm, destination);
        assert!(
            out.status.success(),
            "match: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
