//! Synthetic data with a known ground truth: an onboarder's identity graph
//! (persons with emails, phones and MAIDs, cookie IDs at two destinations)
//! and an advertiser's CRM export drawn from it.
//!
//! The ground truth is the generator's own record of which CRM row belongs
//! to which person. It never calls the normalisation or matching code, so a
//! bug there makes the demo's check fail instead of agreeing with itself.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::{self, Write};
use std::path::Path;

/// The two destinations of the synthetic graph.
pub const DESTINATIONS: [&str; 2] = ["dsp-alpha", "dmp-beta"];

const FIRST: [&str; 8] = [
    "jane", "john", "marie", "luc", "amina", "paul", "chloe", "yann",
];
const LAST: [&str; 8] = [
    "doe", "martin", "bernard", "petit", "durand", "leroy", "moreau", "garcia",
];
const DOMAINS: [&str; 4] = ["gmail.com", "example.fr", "mail.example.com", "orange.fr"];

/// One person of the graph, with the identifiers the graph knows for it.
#[derive(Debug, Clone)]
pub struct Person {
    /// The onboarder's person ID.
    pub id: String,
    /// Email as the onboarder holds it.
    pub email: Option<String>,
    /// Mobile phone in E.164.
    pub phone: Option<String>,
    /// Mobile ad ID.
    pub maid: Option<String>,
    /// Cookie IDs per destination.
    pub cookies: BTreeMap<&'static str, Vec<String>>,
}

/// The onboarder's identity graph.
pub struct Graph {
    /// Every person.
    pub persons: Vec<Person>,
}

impl Graph {
    /// A graph of `n` persons; every person has at least one identifier.
    pub fn generate(n: usize, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let persons = (0..n)
            .map(|i| {
                let mut email = rng.gen_bool(0.9).then(|| email_of(i));
                let phone = rng.gen_bool(0.6).then(|| phone_of(i));
                let maid = rng.gen_bool(0.4).then(|| maid_of(&mut rng));
                if email.is_none() && phone.is_none() && maid.is_none() {
                    email = Some(email_of(i));
                }
                let mut cookies = BTreeMap::new();
                for (d, share) in DESTINATIONS.iter().zip([0.85, 0.5]) {
                    if rng.gen_bool(share) {
                        let count = rng.gen_range(1..=2);
                        let ids = (0..count)
                            .map(|c| format!("{}-{:08x}{c}", &d[..3], rng.gen::<u32>()))
                            .collect();
                        cookies.insert(*d, ids);
                    }
                }
                Person {
                    id: format!("p{i:07}"),
                    email,
                    phone,
                    maid,
                    cookies,
                }
            })
            .collect();
        Self { persons }
    }

    /// Total identifiers in the graph.
    pub fn identifier_count(&self) -> usize {
        self.persons
            .iter()
            .map(|p| {
                p.email.is_some() as usize + p.phone.is_some() as usize + p.maid.is_some() as usize
            })
            .sum()
    }

    /// Write `person_id,kind,value` (the operator's import format).
    pub fn write_identifiers(&self, path: &Path) -> io::Result<()> {
        let mut out = io::BufWriter::new(std::fs::File::create(path)?);
        writeln!(out, "person_id,kind,value")?;
        for p in &self.persons {
            for (kind, value) in [("email", &p.email), ("phone", &p.phone), ("maid", &p.maid)] {
                if let Some(v) = value {
                    writeln!(out, "{},{kind},{v}", p.id)?;
                }
            }
        }
        out.flush()
    }

    /// Write `person_id,destination,cookie_id`.
    pub fn write_cookies(&self, path: &Path) -> io::Result<()> {
        let mut out = io::BufWriter::new(std::fs::File::create(path)?);
        writeln!(out, "person_id,destination,cookie_id")?;
        for p in &self.persons {
            for (d, ids) in &p.cookies {
                for c in ids {
                    writeln!(out, "{},{d},{c}", p.id)?;
                }
            }
        }
        out.flush()
    }
}

fn email_of(i: usize) -> String {
    format!(
        "{}.{}{i}@{}",
        FIRST[i % 8],
        LAST[(i / 8) % 8],
        DOMAINS[(i / 64) % 4]
    )
}

/// `+33 61…`: a valid French mobile range (not every `6x` prefix is).
fn phone_of(i: usize) -> String {
    format!("+3361{:07}", (i * 7919 + 1_000_000) % 10_000_000)
}

fn maid_of(rng: &mut StdRng) -> String {
    let b: [u8; 16] = rng.gen();
    let h = hex::encode(b);
    format!(
        "{}-{}-4{}-a{}-{}",
        &h[..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

/// A segment's plan in the CRM export.
pub struct SegmentPlan {
    /// Segment name.
    pub name: &'static str,
    /// Rows drawn from graph persons.
    pub graph_rows: usize,
    /// Rows of people the onboarder does not know.
    pub unknown_rows: usize,
}

/// The demo's CRM: Gold, Silver and Bronze well above the minimum audience
/// size, Platinum below it.
pub fn demo_segments(rows: usize) -> Vec<SegmentPlan> {
    let part = |share: f64| (rows as f64 * share) as usize;
    vec![
        SegmentPlan {
            name: "Gold",
            graph_rows: part(0.18),
            unknown_rows: part(0.07),
        },
        SegmentPlan {
            name: "Silver",
            graph_rows: part(0.28),
            unknown_rows: part(0.12),
        },
        SegmentPlan {
            name: "Bronze",
            graph_rows: part(0.24),
            unknown_rows: part(0.10),
        },
        SegmentPlan {
            name: "Platinum",
            graph_rows: 60,
            unknown_rows: 40,
        },
    ]
}

/// What the generator knows about the CRM it wrote.
#[derive(Debug, Default)]
pub struct CrmTruth {
    /// Rows written (without the header).
    pub rows: usize,
    /// Rows whose consent column says no.
    pub no_consent_rows: usize,
    /// Rows whose only identifier was deliberately malformed.
    pub malformed_rows: usize,
    /// Per segment, the graph persons (by index) that a correct match finds.
    pub matched: BTreeMap<String, BTreeSet<usize>>,
}

impl CrmTruth {
    /// The cookie IDs a correct match delivers to `destination` for `segment`.
    pub fn expected_cookies(
        &self,
        graph: &Graph,
        segment: &str,
        destination: &str,
    ) -> BTreeSet<String> {
        self.matched
            .get(segment)
            .into_iter()
            .flatten()
            .filter_map(|&i| graph.persons[i].cookies.get(destination))
            .flatten()
            .cloned()
            .collect()
    }

    /// Matched persons of `segment` who have at least one cookie at `destination`.
    pub fn persons_with_cookies(&self, graph: &Graph, segment: &str, destination: &str) -> usize {
        self.matched
            .get(segment)
            .into_iter()
            .flatten()
            .filter(|&&i| graph.persons[i].cookies.contains_key(destination))
            .count()
    }
}

/// Write an advertiser CRM export (`;` separated, with a BOM, as French CRM
/// tools write them) and return its ground truth.
pub fn write_crm(
    graph: &Graph,
    plans: &[SegmentPlan],
    path: &Path,
    seed: u64,
) -> io::Result<CrmTruth> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut truth = CrmTruth::default();
    let mut out = io::BufWriter::new(std::fs::File::create(path)?);
    out.write_all("\u{feff}".as_bytes())?;
    writeln!(out, "customer_id;email;phone;mobile_ad_id;segment;consent")?;
    let mut unknown = 0usize;
    for plan in plans {
        let matched = truth.matched.entry(plan.name.to_string()).or_default();
        for _ in 0..plan.graph_rows {
            let i = rng.gen_range(0..graph.persons.len());
            let p = &graph.persons[i];
            let consent = !rng.gen_bool(0.04);
            let malformed = rng.gen_bool(0.02);
            let mut row = CrmRow::default();
            if malformed {
                // Only a broken identifier: a rejected row, whoever it was.
                row.email = Some(format!("{}.at.example.com", FIRST[i % 8]));
                truth.malformed_rows += 1;
            } else {
                row.email = p
                    .email
                    .as_ref()
                    .filter(|_| rng.gen_bool(0.8))
                    .map(|e| email_variant(e, &mut rng));
                row.phone = p
                    .phone
                    .as_ref()
                    .filter(|_| rng.gen_bool(0.7))
                    .map(|t| phone_variant(t, &mut rng));
                row.maid = p
                    .maid
                    .as_ref()
                    .filter(|_| rng.gen_bool(0.7))
                    .map(|m| m.to_uppercase());
                if row.email.is_none() && row.phone.is_none() && row.maid.is_none() {
                    row.email = p.email.clone();
                    row.phone = p.phone.clone();
                    row.maid = p.maid.clone();
                }
                if consent {
                    matched.insert(i);
                }
            }
            if !consent {
                truth.no_consent_rows += 1;
            }
            row.write(
                &mut out,
                &format!("c{}", rng.gen::<u32>()),
                plan.name,
                consent,
            )?;
            truth.rows += 1;
        }
        for _ in 0..plan.unknown_rows {
            unknown += 1;
            let row = CrmRow {
                email: Some(format!("stranger{unknown}@example.net")),
                ..CrmRow::default()
            };
            row.write(&mut out, &format!("u{unknown}"), plan.name, true)?;
            truth.rows += 1;
        }
    }
    out.flush()?;
    Ok(truth)
}

#[derive(Default)]
struct CrmRow {
    email: Option<String>,
    phone: Option<String>,
    maid: Option<String>,
}

impl CrmRow {
    fn write(
        &self,
        out: &mut impl Write,
        id: &str,
        segment: &str,
        consent: bool,
    ) -> io::Result<()> {
        let mut line = String::new();
        let field = |v: &Option<String>| v.clone().unwrap_or_default();
        let _ = write!(
            line,
            "{id};{};\"{}\";{};{segment};{}",
            field(&self.email),
            field(&self.phone),
            field(&self.maid),
            if consent { "oui" } else { "non" }
        );
        writeln!(out, "{line}")
    }
}

/// The same address as an advertiser would type it: other case, padding, and
/// at Gmail dots and `+tags` that normalisation must undo.
fn email_variant(email: &str, rng: &mut StdRng) -> String {
    let (local, domain) = email.split_once('@').unwrap_or((email, ""));
    let local = if domain == "gmail.com" && rng.gen_bool(0.5) {
        format!("{}+promo", local.replace('.', ""))
    } else {
        local.to_string()
    };
    let text = format!("{local}@{domain}");
    if rng.gen_bool(0.3) {
        format!(" {} ", text.to_uppercase())
    } else {
        text
    }
}

/// French national format half of the time: `06 12 34 56 78`.
fn phone_variant(e164: &str, rng: &mut StdRng) -> String {
    let national = e164.strip_prefix("+33").map(|rest| format!("0{rest}"));
    match national {
        Some(n) if rng.gen_bool(0.5) => n
            .as_bytes()
            .chunks(2)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect::<Vec<_>>()
            .join(" "),
        _ => e164.to_string(),
    }
}
