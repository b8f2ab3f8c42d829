//! `onboard match --html` through the real CLI against the real server:
//! the page parses as HTML5, loads nothing from anywhere, draws one bar
//! group per segment, shows the report's own (noisy) figures and never a
//! value of the CRM file. With Chromium at /usr/bin/chromium it is also
//! rendered headless, and the screenshot's pixels must show the bars in
//! their colours and the text; without Chromium the screenshot is skipped with one
//! line, except under `CI=true`, where that is a failure.

mod common;

use common::{simple_graph, TestServer};
use scraper::{Html, Selector};
use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const DESTINATION: &str = "dsp-html";
/// A segment name that must come out escaped.
const GOLD: &str = "Gold <i>& co";

/// `email,phone,segment` rows: 250 graph members in Gold (delivered), 10 in
/// Tiny (withheld), 30 strangers with phones in Gold, and a Lost segment
/// whose only row is rejected. Returns the file's text.
fn crm() -> String {
    let mut text = String::from("email,phone,segment\n");
    for i in 0..250 {
        text.push_str(&format!("person{i}@example.com,,{GOLD}\n"));
    }
    for i in 250..260 {
        text.push_str(&format!("person{i}@example.com,,Tiny\n"));
    }
    for j in 0..30 {
        text.push_str(&format!(
            "stranger{j}@elsewhere.example.org,06 12 00 {j:02} 99,{GOLD}\n"
        ));
    }
    text.push_str("broken-address,,Lost\n");
    text
}

/// Every value of the CRM file's identifier columns, raw and normalised.
fn identifier_values(crm: &str) -> Vec<String> {
    let mut values = Vec::new();
    for line in crm.lines().skip(1) {
        let cells: Vec<&str> = line.split(',').collect();
        for cell in &cells[..2] {
            if !cell.is_empty() {
                values.push(cell.to_string());
            }
        }
        if !cells[1].is_empty() {
            values.push(format!("+33612000{}99", &cells[1][9..11]));
        }
    }
    values
}

fn select<'a>(page: &'a Html, css: &str) -> Vec<scraper::ElementRef<'a>> {
    page.select(&Selector::parse(css).expect("selector"))
        .collect()
}

/// Structure every report page has: parses cleanly, nothing external, one
/// bar group of three bars per segment. Returns the groups' segment names.
fn check_page(text: &str, crm: &str) -> BTreeSet<String> {
    let page = Html::parse_document(text);
    assert!(
        page.errors.is_empty(),
        "HTML5 parse errors: {:?}",
        page.errors
    );
    for tag in ["script", "link", "img", "iframe", "object", "embed", "base"] {
        assert!(select(&page, tag).is_empty(), "a <{tag}> in the page");
    }
    for element in select(&page, "*") {
        for (name, value) in element.value().attrs() {
            assert!(
                !name.starts_with("on") && !matches!(name, "src" | "href" | "xlink:href" | "style"),
                "attribute {name}={value:?}"
            );
            assert!(!value.contains("://"), "a URL in {name}={value:?}");
        }
    }
    let style: String = select(&page, "style")
        .iter()
        .flat_map(|s| s.text())
        .collect();
    assert!(!style.contains("url(") && !style.contains("@import") && !style.contains("@font-face"));
    let groups = select(&page, "svg g.segment");
    for group in &groups {
        assert_eq!(
            group.select(&Selector::parse("rect").unwrap()).count(),
            3,
            "uploaded, matched and delivered bars"
        );
    }
    for value in identifier_values(crm) {
        assert!(
            !text.contains(&value),
            "the row value {value} is in the page"
        );
    }
    groups
        .iter()
        .map(|g| {
            g.value()
                .attr("data-segment")
                .unwrap_or_default()
                .to_owned()
        })
        .collect()
}

/// The cells of the segments table's row for `name`.
fn segment_row(text: &str, name: &str) -> Vec<String> {
    let page = Html::parse_document(text);
    select(&page, "table.segments tbody tr")
        .into_iter()
        .map(|row| {
            row.select(&Selector::parse("td").unwrap())
                .map(|td| td.text().collect::<String>())
                .collect::<Vec<_>>()
        })
        .find(|cells| cells.first().map(String::as_str) == Some(name))
        .unwrap_or_else(|| panic!("no row for {name}"))
}

#[test]
fn match_writes_a_self_contained_html_report() {
    let server = TestServer::start(&[("K", "50"), ("MIN_JOB_ROWS", "50")]);
    simple_graph(&server, 300, DESTINATION);
    server.create("destination", DESTINATION);
    let advertiser = server.create("advertiser", "html-advertiser");
    let key = server.path("acme.key");
    server.ok(&advertiser, &["keygen", "--out", key.to_str().unwrap()]);
    let text = crm();
    let input = server.path("crm.csv");
    std::fs::write(&input, &text).unwrap();
    let html = server.path("report.html");
    let mut args = vec![
        "match",
        "--input",
        input.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
        "--destination",
        DESTINATION,
        "--email-col",
        "email",
        "--phone-col",
        "phone",
        "--segment-col",
        "segment",
        "--html",
        html.to_str().unwrap(),
    ];
    let printed = server.json(&advertiser, &[args.as_slice(), &["--json"]].concat());
    let report = &printed["report"];
    let page = std::fs::read_to_string(&html).expect("the HTML report");

    let groups = check_page(&page, &text);
    let names: BTreeSet<String> = [GOLD, "Tiny", "Lost"].map(str::to_owned).into();
    assert_eq!(groups, names);
    assert!(!page.contains("<i>"), "segment names are escaped");
    assert!(page.contains(report["job_id"].as_str().unwrap()));
    assert!(page.contains(&server.url));
    assert!(page.contains(DESTINATION));
    // The table shows the report's own figures: its noisy count and status.
    for segment in report["segments"].as_array().unwrap() {
        let name = segment["name"].as_str().unwrap();
        let cells = segment_row(&page, name);
        assert_eq!(cells[1], segment["rows_uploaded"].to_string(), "{name}");
        assert_eq!(cells[3], segment["matched"].as_str().unwrap(), "{name}");
        assert_eq!(cells[5], segment["status"].as_str().unwrap(), "{name}");
    }
    assert_eq!(segment_row(&page, GOLD)[5], "delivered");
    assert_eq!(segment_row(&page, "Tiny")[4], "withheld");
    assert_eq!(segment_row(&page, "Lost")[5], "not uploaded");

    // A dry run writes the page too, from the local counts alone.
    let dry_html = server.path("dry.html");
    args.truncate(args.len() - 1);
    args.push(dry_html.to_str().unwrap());
    server.ok(&advertiser, &[args.as_slice(), &["--dry-run"]].concat());
    let dry = std::fs::read_to_string(&dry_html).expect("the dry-run HTML report");
    assert_eq!(check_page(&dry, &text), names);
    assert!(dry.contains("dry run"));
    assert_eq!(segment_row(&dry, GOLD)[1], "280");

    screenshot(&html, &server.path("report.png"));
}

/// Render `html` in headless Chromium and check what it drew: the bars in
/// their colours and the text.
fn screenshot(html: &Path, png: &Path) {
    let chromium = Path::new("/usr/bin/chromium");
    if !chromium.exists() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but /usr/bin/chromium is missing: the report must be rendered (apt-get install chromium)"
        );
        println!("skipped the screenshot: /usr/bin/chromium is not installed");
        return;
    }
    let profile = tempfile::tempdir().unwrap();
    let mut child = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--screenshot={}", png.display()))
        .arg("--window-size=1024,1400")
        .arg(format!("file://{}", html.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromium");
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish the screenshot within 120 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "chromium failed: {status}");
    let pixels = Pixels::read(png);
    assert_eq!((pixels.width, pixels.height), (1024, 1400));
    // The bars were drawn in their inline style's colours: far more of each
    // than the legend's 12 px squares (a bar is hundreds of pixels long and
    // 10 high), and the text in the page's dark ink.
    let drawn: Vec<(&str, usize)> = [
        ("uploaded", [0x8a, 0xa4, 0xc8]),
        ("matched", [0x3c, 0x6f, 0xb6]),
        ("delivered", [0x1f, 0x9d, 0x6b]),
        ("text", [0x1d, 0x24, 0x30]),
    ]
    .into_iter()
    .map(|(name, colour)| (name, pixels.count(colour)))
    .collect();
    assert!(
        drawn.iter().all(|(_, n)| *n > 1_000),
        "pixels drawn in each colour: {drawn:?}"
    );
}

/// A screenshot's pixels as RGB.
struct Pixels {
    width: u32,
    height: u32,
    rgb: Vec<[u8; 3]>,
}

impl Pixels {
    fn read(path: &Path) -> Self {
        let file = std::io::BufReader::new(std::fs::File::open(path).expect("the screenshot"));
        let mut decoder = png::Decoder::new(file);
        decoder.set_transformations(png::Transformations::normalize_to_color8());
        let mut reader = decoder.read_info().expect("a PNG");
        let mut buf = vec![0; reader.output_buffer_size().expect("a buffer size")];
        let info = reader.next_frame(&mut buf).expect("a PNG frame");
        let channels = match info.color_type {
            png::ColorType::Rgb => 3,
            png::ColorType::Rgba => 4,
            other => panic!("a screenshot in {other:?}"),
        };
        let rgb = buf[..info.buffer_size()]
            .chunks_exact(channels)
            .map(|p| [p[0], p[1], p[2]])
            .collect();
        Pixels {
            width: info.width,
            height: info.height,
            rgb,
        }
    }

    /// Pixels within a few levels of `colour` (anti-aliased edges aside).
    fn count(&self, colour: [u8; 3]) -> usize {
        let near = |p: &[u8; 3]| p.iter().zip(colour).all(|(a, b)| a.abs_diff(b) <= 3);
        self.rgb.iter().filter(|p| near(p)).count()
    }
}
