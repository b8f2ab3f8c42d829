//! The server's report of a finished job (docs/api.md), as received: shared
//! by the match pipeline, which gets it from the finish, and by `jobs`, which
//! reads it back with the job.

use serde::{Deserialize, Deserializer, Serialize};

/// One segment in the server's report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SegmentReport {
    /// Segment name.
    pub name: String,
    /// Rows uploaded for it.
    #[serde(default)]
    pub rows_uploaded: u64,
    /// Matched people: a noisy count, or `< k`.
    #[serde(default, deserialize_with = "text")]
    pub matched: String,
    /// `delivered` or `withheld`.
    #[serde(default)]
    pub status: String,
    /// Why withheld.
    #[serde(default)]
    pub reason: Option<String>,
    /// The audience, when delivered (or when its refresh is held back).
    #[serde(default)]
    pub audience_id: Option<String>,
    /// The audience's version: 1 when new, 2, 3… when refreshed (the
    /// version it stays at when the refresh is held back).
    #[serde(default)]
    pub version: Option<u64>,
}

impl SegmentReport {
    /// The audience as shown in tables: its ID, and its version once refreshed.
    pub fn audience_label(&self) -> String {
        match (&self.audience_id, self.version) {
            (Some(id), Some(v)) if v > 1 => format!("{id} (version {v})"),
            (Some(id), _) => id.clone(),
            (None, _) => String::new(),
        }
    }
}

/// The server's job report (docs/api.md), as received.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JobReport {
    /// The job.
    pub job_id: String,
    /// `finished` (or `failed`).
    #[serde(default)]
    pub status: String,
    /// Graph version matched against.
    #[serde(default)]
    pub graph_version: u64,
    /// Destination.
    #[serde(default)]
    pub destination: String,
    /// Rows uploaded.
    #[serde(default)]
    pub rows_uploaded: u64,
    /// Match rate in whole percent (`62%`, `> 85%`).
    #[serde(default, deserialize_with = "text")]
    pub match_rate: String,
    /// Minimum audience size.
    #[serde(default)]
    pub k: u64,
    /// Privacy budget spent by this report.
    #[serde(default)]
    pub epsilon_spent: f64,
    /// Per segment.
    #[serde(default)]
    pub segments: Vec<SegmentReport>,
    /// Fields this client does not know yet.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// A string or a number on the wire, kept as text.
fn text<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::Null => String::new(),
        serde_json::Value::String(s) => s,
        other => other.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_parses_strings_and_numbers() {
        let r: JobReport = serde_json::from_str(
            r#"{"job_id":"j-1","status":"finished","graph_version":3,"destination":"dsp-a","rows_uploaded":10,
                "match_rate":"62%","k":100,"epsilon_spent":0.5,"new_field":1,
                "segments":[{"name":"Gold","rows_uploaded":4,"matched":2480,"status":"delivered","reason":null,"audience_id":"a-1"},
                            {"name":"Bronze","rows_uploaded":1,"matched":"< 100","status":"withheld","reason":"below-minimum-size","audience_id":null}]}"#,
        )
        .unwrap();
        assert_eq!(r.segments[0].matched, "2480");
        assert_eq!(r.segments[1].matched, "< 100");
        assert_eq!(r.extra["new_field"], 1);
    }
}
