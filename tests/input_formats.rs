//! The advertiser's files as they really come, through the real command line
//! against the real server over TLS: one CRM (accented column names and
//! segment, French phones, consent) written as UTF-8, Windows-1252 with `;`
//! and CRLF, UTF-16 with a BOM, gzip, .xlsx (phones as number cells, consent
//! as booleans, on a second sheet) and .ods gives the same audiences every
//! time, and the ones the ground truth expects.

mod common;

use common::TestServer;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};

/// One destination per format: the difference check withholds an audience
/// too close to an earlier one for the same destination, even an equal one.
const DESTINATIONS: [&str; 6] = ["dsp-0", "dsp-1", "dsp-2", "dsp-3", "dsp-4", "dsp-5"];
const HEADER: [&str; 4] = ["Courriel", "Téléphone", "Segment", "Consentement"];
/// Persons per segment: clear of k = 50 plus the release margin (28 at ε = 0.5).
const PER_SEGMENT: usize = 150;
const SEGMENTS: [&str; 2] = ["Or", "Fidèle"];

/// A cell as a spreadsheet types it.
enum Cell {
    Text(String),
    Number(f64),
    Bool(bool),
    Empty,
}

/// Person `i` of the graph: an email, a French mobile (national number).
fn email(i: usize) -> String {
    format!("person{i}@example.com")
}

fn mobile(i: usize) -> u64 {
    612_000_000 + i as u64
}

/// The CRM as typed cells: in each segment, even persons by email, odd ones
/// by phone, a few by both; then rows without consent and strangers.
fn crm() -> Vec<Vec<Cell>> {
    let mut rows = Vec::new();
    for (s, segment) in SEGMENTS.iter().enumerate() {
        for i in s * PER_SEGMENT..(s + 1) * PER_SEGMENT {
            let by_email = i % 2 == 0 || i % 7 == 0;
            let by_phone = i % 2 == 1 || i % 7 == 0;
            rows.push(vec![
                if by_email {
                    Cell::Text(email(i))
                } else {
                    Cell::Empty
                },
                if by_phone {
                    Cell::Number(mobile(i) as f64)
                } else {
                    Cell::Empty
                },
                Cell::Text(segment.to_string()),
                Cell::Bool(true),
            ]);
        }
    }
    for i in 0..10 {
        // Persons of the graph, but no consent: never matched.
        let i = 2 * PER_SEGMENT + i;
        rows.push(vec![
            Cell::Text(email(i)),
            Cell::Empty,
            Cell::Text(SEGMENTS[0].into()),
            Cell::Bool(false),
        ]);
    }
    for j in 0..20 {
        rows.push(vec![
            Cell::Text(format!("stranger{j}@elsewhere.example.org")),
            Cell::Empty,
            Cell::Text(SEGMENTS[1].into()),
            Cell::Bool(true),
        ]);
    }
    rows
}

/// The CRM as CSV text: phones as a French person types them, consent as
/// `oui`/`non`.
fn crm_text(delimiter: char, newline: &str) -> String {
    let d = delimiter.to_string();
    let mut text = HEADER.join(&d) + newline;
    for row in crm() {
        let cells: Vec<String> = row
            .iter()
            .map(|cell| match cell {
                Cell::Text(s) => s.clone(),
                Cell::Number(n) => format!("0{n}"),
                Cell::Bool(b) => if *b { "oui" } else { "non" }.into(),
                Cell::Empty => String::new(),
            })
            .collect();
        text.push_str(&cells.join(&d));
        text.push_str(newline);
    }
    text
}

fn write_xlsx(path: &Path) {
    let mut book = rust_xlsxwriter::Workbook::new();
    book.add_worksheet().set_name("Notes").unwrap();
    let sheet = book.add_worksheet().set_name("Clients").unwrap();
    for (c, h) in HEADER.iter().enumerate() {
        sheet.write_string(0, c as u16, *h).unwrap();
    }
    for (r, row) in crm().iter().enumerate() {
        let r = r as u32 + 1;
        for (c, cell) in row.iter().enumerate() {
            let c = c as u16;
            match cell {
                Cell::Text(s) => sheet.write_string(r, c, s).map(|_| ()),
                Cell::Number(n) => sheet.write_number(r, c, *n).map(|_| ()),
                Cell::Bool(b) => sheet.write_boolean(r, c, *b).map(|_| ()),
                Cell::Empty => Ok(()),
            }
            .unwrap();
        }
    }
    book.save(path).unwrap();
}

/// A minimal OpenDocument spreadsheet: the stored `mimetype` first, a
/// manifest, and `content.xml` with one table of typed cells.
fn write_ods(path: &Path) {
    use zip::write::SimpleFileOptions;
    let escape = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    };
    let cell = |c: &Cell| match c {
        Cell::Text(s) => format!(
            r#"<table:table-cell office:value-type="string"><text:p>{}</text:p></table:table-cell>"#,
            escape(s)
        ),
        Cell::Number(n) => format!(
            r#"<table:table-cell office:value-type="float" office:value="{n}"><text:p>{n}</text:p></table:table-cell>"#
        ),
        Cell::Bool(b) => format!(
            r#"<table:table-cell office:value-type="boolean" office:boolean-value="{b}"><text:p>{b}</text:p></table:table-cell>"#
        ),
        Cell::Empty => "<table:table-cell/>".into(),
    };
    let mut rows = vec![HEADER.iter().map(|h| Cell::Text(h.to_string())).collect()];
    rows.extend(crm());
    let table: String = rows
        .iter()
        .map(|row| {
            let cells: String = row.iter().map(cell).collect();
            format!("<table:table-row>{cells}</table:table-row>")
        })
        .collect();
    let content = format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<office:document-content xmlns:office="urn:oasis:names:tc:opendocument:xmlns:office:1.0" xmlns:table="urn:oasis:names:tc:opendocument:xmlns:table:1.0" xmlns:text="urn:oasis:names:tc:opendocument:xmlns:text:1.0" office:version="1.2"><office:body><office:spreadsheet><table:table table:name="Clients">{table}</table:table></office:spreadsheet></office:body></office:document-content>"#
    );
    let manifest = r#"<?xml version="1.0" encoding="UTF-8"?>
<manifest:manifest xmlns:manifest="urn:oasis:names:tc:opendocument:xmlns:manifest:1.0" manifest:version="1.2"><manifest:file-entry manifest:full-path="/" manifest:media-type="application/vnd.oasis.opendocument.spreadsheet"/><manifest:file-entry manifest:full-path="content.xml" manifest:media-type="text/xml"/></manifest:manifest>"#;
    let mut zip = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let stored = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, body) in [
        ("mimetype", "application/vnd.oasis.opendocument.spreadsheet"),
        ("META-INF/manifest.xml", manifest),
        ("content.xml", content.as_str()),
    ] {
        zip.start_file(name, stored).unwrap();
        zip.write_all(body.as_bytes()).unwrap();
    }
    zip.finish().unwrap();
}

fn utf16le_with_bom(text: &str) -> Vec<u8> {
    let mut out = vec![0xFF, 0xFE];
    out.extend(text.encode_utf16().flat_map(u16::to_le_bytes));
    out
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

/// The graph: persons 0..330 with their email, phone and cookie.
fn import_graph(server: &TestServer) {
    let ids = server.path("ids.csv");
    let cookies = server.path("cookies.csv");
    let mut id_lines = String::from("person_id,kind,value\n");
    let mut cookie_lines = String::from("person_id,destination,cookie_id\n");
    for i in 0..2 * PER_SEGMENT + 30 {
        id_lines.push_str(&format!("p{i},email,{}\n", email(i)));
        id_lines.push_str(&format!("p{i},phone,+33{}\n", mobile(i)));
        for d in DESTINATIONS {
            cookie_lines.push_str(&format!("p{i},{d},ck-{i}\n"));
        }
    }
    std::fs::write(&ids, id_lines).unwrap();
    std::fs::write(&cookies, cookie_lines).unwrap();
    server.import(&ids, Some(&cookies));
}

fn match_args<'a>(
    input: &'a str,
    key: &'a str,
    destination: &'a str,
    extra: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec![
        "match",
        "--input",
        input,
        "--key",
        key,
        "--destination",
        destination,
        // Lower case and unaccented where the header is not: NFC, trim, case.
        "--email-col",
        "courriel",
        "--phone-col",
        "téléphone",
        "--segment-col",
        "SEGMENT",
        "--consent-col",
        "consentement",
        "--json",
    ];
    args.extend_from_slice(extra);
    args
}

/// Cookie IDs of each delivered segment of a `match --json` output.
fn delivered(server: &TestServer, destination: &str, out: &serde_json::Value) -> Audiences {
    let mut audiences = BTreeMap::new();
    for seg in out["report"]["segments"].as_array().expect("segments") {
        let name = seg["name"].as_str().unwrap().to_string();
        assert_eq!(seg["status"], "delivered", "{name}: {out}");
        let id = seg["audience_id"].as_str().unwrap();
        let members = server.ok(destination, &["audiences", "pull", id]);
        audiences.insert(name, members.lines().map(str::to_owned).collect());
    }
    audiences
}

type Audiences = BTreeMap<String, BTreeSet<String>>;

/// `onboard match --dry-run` of `input` with `args`: no server, no key read.
fn dry_run(input: &Path, args: &[&str]) -> std::process::Output {
    let mut all = vec!["match", "--dry-run", "--input", input.to_str().unwrap()];
    all.extend_from_slice(&["--key", "unused.key", "--destination", "dsp-0"]);
    all.extend_from_slice(args);
    common::onboard_at("https://127.0.0.1:1", Path::new("unused-ca.pem"), "", &all)
}

/// The quality report of a successful `--json` run.
fn quality_of(out: &std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    json["quality"].clone()
}

#[test]
fn every_format_gives_the_same_audiences() {
    let server = TestServer::start(&[
        ("K", "50"),
        ("MIN_JOB_ROWS", "50"),
        ("PRIVACY_BUDGET", "100"),
    ]);
    let advertiser = server.create("advertiser", "acme");
    let destinations: Vec<String> = DESTINATIONS
        .iter()
        .map(|d| server.create("destination", d))
        .collect();
    import_graph(&server);
    let key = server.path("acme.key");
    server.ok(&advertiser, &["keygen", "--out", key.to_str().unwrap()]);
    let key = key.to_str().unwrap();

    let text = crm_text(';', "\r\n");
    let (legacy, _, unmappable) = encoding_rs::WINDOWS_1252.encode(&text);
    assert!(!unmappable && std::str::from_utf8(&legacy).is_err());
    let file = |name: &str, bytes: &[u8]| -> PathBuf {
        let path = server.path(name);
        std::fs::write(&path, bytes).unwrap();
        path
    };
    let xlsx = server.path("crm.xlsx");
    write_xlsx(&xlsx);
    let ods = server.path("crm.ods");
    write_ods(&ods);
    // (file, extra flags, format, encoding, delimiter or sheet)
    let inputs: Vec<(PathBuf, Vec<&str>, &str, &str, &str)> = vec![
        (
            file("utf8.csv", text.as_bytes()),
            vec![],
            "csv",
            "UTF-8",
            ";",
        ),
        (
            file("excel-fr.csv", &legacy),
            vec![],
            "csv",
            "windows-1252",
            ";",
        ),
        (
            file("utf16.tsv", &utf16le_with_bom(&crm_text('\t', "\n"))),
            vec![],
            "csv",
            "UTF-16LE",
            "\\t",
        ),
        (
            file("crm.csv.gz", &gzip(crm_text(',', "\n").as_bytes())),
            vec![],
            "csv+gzip",
            "UTF-8",
            ",",
        ),
        (xlsx, vec!["--sheet", "clients"], "xlsx", "", "Clients"),
        (ods, vec![], "ods", "", "Clients"),
    ];

    let expected: Audiences = SEGMENTS
        .iter()
        .enumerate()
        .map(|(s, name)| {
            let cookies = (s * PER_SEGMENT..(s + 1) * PER_SEGMENT).map(|i| format!("ck-{i}"));
            (name.to_string(), cookies.collect())
        })
        .collect();
    for (n, (path, extra, format, encoding, where_)) in inputs.iter().enumerate() {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let out = server.onboard(
            &advertiser,
            &match_args(path.to_str().unwrap(), key, DESTINATIONS[n], extra),
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{name}: {stderr}");
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let q = &json["quality"];
        assert_eq!(q["format"], *format, "{name}: {q}");
        assert_eq!(q["encoding"], *encoding, "{name}: {q}");
        if q["sheet"].is_string() {
            assert_eq!(q["sheet"], *where_, "{name}: {q}");
        } else {
            assert_eq!(q["delimiter"], *where_, "{name}: {q}");
        }
        assert_eq!(q["rows_to_upload"], 2 * PER_SEGMENT + 20, "{name}: {q}");
        assert_eq!(q["rows_without_consent"], 10, "{name}: {q}");
        let invalid: Vec<_> = q["columns"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["invalid"] != serde_json::json!({}))
            .collect();
        assert!(invalid.is_empty(), "{name}: {q}");
        // One notice, only for the file that is not UTF-8.
        let notices = stderr.matches("is not valid UTF-8").count();
        assert_eq!(
            notices,
            usize::from(*encoding == "windows-1252"),
            "{name}: {stderr}"
        );
        assert_eq!(
            delivered(&server, &destinations[n], &json),
            expected,
            "{name}"
        );
    }
}

#[test]
fn bad_bytes_in_a_forced_encoding_name_their_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crm.csv");
    let mut bytes = b"email;segment\r\na@example.com;Or\r\nb@example.com;Or\r\n".to_vec();
    bytes.extend_from_slice(b"c@example.com;Fid\xE8le\r\n");
    std::fs::write(&path, &bytes).unwrap();
    let run = |extra: &[&str]| {
        let mut args = vec!["--email-col", "email", "--segment-col", "segment"];
        args.extend_from_slice(extra);
        dry_run(&path, &args)
    };
    let out = run(&["--encoding", "utf-8"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("line 4") && stderr.contains("not valid UTF-8"),
        "{stderr}"
    );
    // Told the right encoding, or left to find it, the file reads.
    for extra in [&["--encoding", "latin1"][..], &[]] {
        let out = run(extra);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("encoding windows-1252"), "{text}");
    }
    let out = run(&["--encoding", "klingon"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("`klingon`"));
}

#[test]
fn typed_cells_in_identifier_columns_are_invalid_with_their_sheet_row() {
    use rust_xlsxwriter::{ExcelDateTime, Format, Formula, Workbook};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crm.xlsx");
    let mut book = Workbook::new();
    let sheet = book.add_worksheet().set_name("Export").unwrap();
    // The table starts on row 3: row numbers are the sheet's.
    for (c, h) in ["email", "phone", "segment"].iter().enumerate() {
        sheet.write_string(2, c as u16, *h).unwrap();
    }
    let date = ExcelDateTime::from_ymd(2024, 3, 1).unwrap();
    let date_format = Format::new().set_num_format("dd/mm/yyyy");
    sheet.write_string(3, 0, "a@example.com").unwrap();
    sheet.write_number(3, 1, 612345678.0).unwrap();
    sheet
        .write_formula(
            4,
            0,
            Formula::new("=\"b@\"&\"example.com\"").set_result("b@example.com"),
        )
        .unwrap();
    sheet
        .write_datetime_with_format(4, 1, date, &date_format)
        .unwrap();
    sheet.write_boolean(5, 0, true).unwrap();
    sheet.write_number(5, 1, 6.12345678).unwrap();
    for r in 3..6 {
        sheet.write_string(r, 2, "Or").unwrap();
    }
    book.save(&path).unwrap();

    let run = |extra: &[&str]| {
        let mut args = vec!["--json", "--email-col", "email", "--phone-col", "phone"];
        args.extend_from_slice(&["--segment-col", "segment"]);
        args.extend_from_slice(extra);
        dry_run(&path, &args)
    };
    let q = &quality_of(&run(&[]));
    assert_eq!(
        (q["format"].as_str(), q["sheet"].as_str()),
        (Some("xlsx"), Some("Export"))
    );
    assert_eq!(q["rows_read"], 3, "{q}");
    let invalid = |col: usize, code: &str| q["columns"][col]["invalid"][code].clone();
    let one = |row: u64| serde_json::json!({ "count": 1, "first_rows": [row] });
    assert_eq!(invalid(0, "formula-cell"), one(5), "{q}");
    assert_eq!(invalid(0, "boolean-cell"), one(6), "{q}");
    assert_eq!(invalid(1, "date-cell"), one(5), "{q}");
    assert_eq!(invalid(1, "not-a-whole-number"), one(6), "{q}");
    assert_eq!(
        (
            q["columns"][0]["valid"].as_u64(),
            q["columns"][1]["valid"].as_u64()
        ),
        (Some(1), Some(1))
    );
    assert_eq!(
        q["rows_without_identifier"],
        serde_json::json!({ "count": 2, "first_rows": [5, 6] })
    );

    let out = run(&["--sheet", "Feuil1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("no sheet `Feuil1`") && stderr.contains("`Export`"),
        "{stderr}"
    );
}

#[test]
fn a_legacy_xls_reads_like_the_other_spreadsheets() {
    // Written by tests/fixtures/make_crm_xls.py (xlwt): nothing in Rust writes .xls.
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/crm.xls");
    let args = [
        "--json",
        "--email-col",
        "courriel",
        "--phone-col",
        "téléphone",
    ];
    let q = &quality_of(&dry_run(
        &path,
        &[&args[..], &["--segment-col", "segment"]].concat(),
    ));
    assert_eq!(
        (
            q["format"].as_str(),
            q["sheet"].as_str(),
            q["rows_read"].as_u64()
        ),
        (Some("xls"), Some("Clients"), Some(4)),
        "{q}"
    );
    let one = |row: u64| serde_json::json!({ "count": 1, "first_rows": [row] });
    let (email, phone) = (&q["columns"][0], &q["columns"][1]);
    assert_eq!(
        email["invalid"],
        serde_json::json!({ "boolean-cell": one(5) })
    );
    assert_eq!(
        phone["invalid"],
        serde_json::json!({ "date-cell": one(3), "not-a-whole-number": one(4) })
    );
    // The number 612345678 and the typed phone are both valid French phones.
    assert_eq!(
        (email["valid"].as_u64(), phone["valid"].as_u64()),
        (Some(2), Some(2))
    );
    assert_eq!(q["rows_to_upload"], 3, "{q}");
    assert_eq!(q["segments"]["Fidèle"]["rows_to_upload"], 2, "{q}");
}
