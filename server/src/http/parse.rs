//! Request bodies and query strings parsed with errors that say only what
//! they must: the stable code `bad-request`, the field's name, and for JSON
//! the line and column. Never the parser's own wording ("invalid type: …,
//! expected …"), a Rust type name, or the offending value. A field is named
//! only if the name is one of our own structs' fields (an allow-list), so a
//! key the caller invented is never echoed.

use crate::error::ApiError;
use serde::de::{DeserializeOwned, Visitor};
use serde_path_to_error::{Path, Segment};

/// The field names of a struct type, as its `Deserialize` declares them
/// (empty for anything but a struct).
pub fn struct_fields<T: DeserializeOwned>() -> &'static [&'static str] {
    let mut fields = None;
    let _ = T::deserialize(FieldRecorder(&mut fields));
    fields.unwrap_or(&[])
}

/// A deserializer that records the fields a struct asks for, then stops.
struct FieldRecorder<'a>(&'a mut Option<&'static [&'static str]>);

#[derive(Debug)]
struct Stop;

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("stop")
    }
}

impl std::error::Error for Stop {}

impl serde::de::Error for Stop {
    fn custom<T: std::fmt::Display>(_: T) -> Self {
        Stop
    }
}

impl<'de> serde::Deserializer<'de> for FieldRecorder<'_> {
    type Error = Stop;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
        Err(Stop)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Stop> {
        *self.0 = Some(fields);
        Err(Stop)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map enum identifier ignored_any
    }
}

/// Field names that may be echoed in errors about a `T` body: its own and
/// those of the structs nested in request bodies.
struct Names {
    top: &'static [&'static str],
}

impl Names {
    fn of<T: DeserializeOwned>() -> Self {
        Self {
            top: struct_fields::<T>(),
        }
    }

    fn allowed(&self, name: &str) -> bool {
        self.top.contains(&name)
            || struct_fields::<crate::services::graph::CookieRow>().contains(&name)
    }

    /// `cookies[3].person`, or `None` if a segment is not ours to echo.
    fn render(&self, path: &Path) -> Option<String> {
        let mut out = String::new();
        for segment in path {
            match segment {
                Segment::Seq { index } => out.push_str(&format!("[{index}]")),
                Segment::Map { key } | Segment::Enum { variant: key } if self.allowed(key) => {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.push_str(key);
                }
                _ => return None,
            }
        }
        Some(out)
    }

    /// The field name quoted after `prefix` in a serde message, if ours.
    fn quoted_after(&self, message: &str, prefix: &str) -> Option<String> {
        let rest = message.strip_prefix(prefix)?;
        let name = rest.split('`').next()?;
        self.allowed(name).then(|| name.to_string())
    }

    fn list(&self) -> String {
        self.top
            .iter()
            .map(|f| format!("`{f}`"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// What is parsed: how its fields and the whole are called in messages.
struct Input {
    field: &'static str,
    whole: &'static str,
}

const BODY: Input = Input {
    field: "field",
    whole: "the body",
};
const QUERY: Input = Input {
    field: "query parameter",
    whole: "the query string",
};

/// Where: "the body", "field `cookies[2].cookie`", "a field".
fn location(names: &Names, path: &Path, input: &Input) -> String {
    match names.render(path) {
        Some(p) if p.is_empty() => input.whole.to_string(),
        Some(p) => format!("{} `{p}`", input.field),
        None => format!("a {}", input.field),
    }
}

/// Parse a JSON body as `T`.
pub fn json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut de).map_err(json_error::<T>)?;
    de.end().map_err(|e| {
        ApiError::BadRequest(format!(
            "the body is not valid JSON: trailing characters (line {}, column {})",
            e.line(),
            e.column()
        ))
    })?;
    Ok(value)
}

fn json_error<T: DeserializeOwned>(e: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    use serde_json::error::Category;
    let names = Names::of::<T>();
    let inner = e.inner();
    let at = format!("line {}, column {}", inner.line(), inner.column());
    let message = match inner.classify() {
        Category::Syntax => format!("the body is not valid JSON ({at})"),
        Category::Eof => format!("the body is not valid JSON: it ends early ({at})"),
        Category::Io => "the body could not be read".to_string(),
        Category::Data => data_error(&names, e.path(), &inner.to_string(), &at, &BODY),
    };
    ApiError::BadRequest(message)
}

/// A well-formed body or query that does not fit the struct.
fn data_error(names: &Names, path: &Path, serde_message: &str, at: &str, input: &Input) -> String {
    let at = if at.is_empty() {
        String::new()
    } else {
        format!(" ({at})")
    };
    if let Some(field) = names.quoted_after(serde_message, "missing field `") {
        let parent = names.render(path).filter(|p| !p.is_empty());
        return match parent {
            Some(p) => format!("`{p}`: missing field `{field}`{at}"),
            None => format!("missing field `{field}`{at}"),
        };
    }
    if serde_message.starts_with("unknown field `") {
        let parent = names.render(path).filter(|p| !p.is_empty());
        return match parent {
            Some(p) => format!("`{p}`: unknown field{at}"),
            None if !names.top.is_empty() => {
                format!("unknown field{at}; the fields are {}", names.list())
            }
            None => format!("unknown field{at}"),
        };
    }
    format!("{} has an invalid value{at}", location(names, path, input))
}

/// Parse a query string as `T`.
pub fn query<T: DeserializeOwned>(query_string: &str) -> Result<T, ApiError> {
    let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query_string.as_bytes()));
    serde_path_to_error::deserialize(de).map_err(|e| {
        let names = Names::of::<T>();
        ApiError::BadRequest(data_error(
            &names,
            e.path(),
            &e.inner().to_string(),
            "",
            &QUERY,
        ))
    })
}

/// A query string parsed as `T`, with [`query`]'s errors.
pub struct Query<T>(pub T);

impl<T> Query<T> {
    /// The parsed value.
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> std::ops::Deref for Query<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: DeserializeOwned> actix_web::FromRequest for Query<T> {
    type Error = ApiError;
    type Future = std::future::Ready<Result<Self, ApiError>>;

    fn from_request(req: &actix_web::HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        std::future::ready(query(req.query_string()).map(Query))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        name: String,
        count: u32,
        #[serde(default)]
        rows: Vec<crate::services::graph::CookieRow>,
    }

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Q {
        limit: Option<usize>,
        cursor: Option<String>,
    }

    fn message(r: Result<impl std::fmt::Debug, ApiError>) -> String {
        let e = r.unwrap_err();
        assert_eq!(e.code(), "bad-request");
        e.to_string()
    }

    /// serde's own phrases and the Rust types they name.
    fn assert_clean(m: &str, secret: &str) {
        for word in [
            "invalid type",
            "expected",
            "u32",
            "usize",
            "struct",
            "Body",
            "string \"",
            "integer `",
            "invalid digit",
        ] {
            assert!(!m.contains(word), "{word:?} in {m:?}");
        }
        assert!(!m.contains(secret), "{secret:?} echoed in {m:?}");
    }

    #[test]
    fn records_struct_fields() {
        assert_eq!(struct_fields::<Body>(), ["name", "count", "rows"]);
        assert_eq!(
            struct_fields::<crate::services::graph::CookieRow>(),
            ["person", "destination", "cookie"]
        );
        assert!(struct_fields::<serde_json::Value>().is_empty());
    }

    #[test]
    fn json_errors_name_our_fields_and_echo_nothing() {
        let m = message(json::<Body>(br#"{"name": "n", "count": "SECRET-1"}"#));
        assert_eq!(m, "field `count` has an invalid value (line 1, column 33)");
        assert_clean(&m, "SECRET-1");

        let m = message(json::<Body>(br#"{"name": "n", "count": 1, "SECRET_2": 1}"#));
        assert!(m.starts_with("unknown field (line 1"), "{m}");
        assert!(m.ends_with("the fields are `name`, `count`, `rows`"), "{m}");
        assert_clean(&m, "SECRET_2");

        let m = message(json::<Body>(br#"{"count": 1}"#));
        assert_eq!(m, "missing field `name` (line 1, column 12)");

        let m = message(json::<Body>(
            br#"{"name": "n", "count": 1, "rows": [{"person": "p", "destination": "d", "cookie": 7}]}"#,
        ));
        assert!(
            m.starts_with("field `rows[0].cookie` has an invalid value"),
            "{m}"
        );

        let m = message(json::<Body>(
            br#"{"name": "n", "count": 1, "rows": [{"person": "p", "destination": "d"}]}"#,
        ));
        assert!(m.starts_with("`rows[0]`: missing field `cookie`"), "{m}");

        let m = message(json::<Body>(b"SECRET-3 is not json"));
        assert_eq!(m, "the body is not valid JSON (line 1, column 1)");
        assert_clean(&m, "SECRET-3");

        let m = message(json::<Body>(br#"{"name": "SECRET-4"#));
        assert!(
            m.starts_with("the body is not valid JSON: it ends early"),
            "{m}"
        );
        assert_clean(&m, "SECRET-4");

        let m = message(json::<Body>(br#"["SECRET-5"]"#));
        assert!(m.starts_with("the body has an invalid value"), "{m}");
        assert_clean(&m, "SECRET-5");

        let m = message(json::<Body>(br#"{"name": "n", "count": 1} SECRET-6"#));
        assert!(m.contains("trailing characters"), "{m}");
        assert_clean(&m, "SECRET-6");
    }

    #[test]
    fn a_key_we_do_not_know_is_never_echoed_even_in_a_path() {
        // A syntax error inside an ignored value under an invented key.
        let m = message(json::<crate::services::graph::CookieRow>(
            br#"{"SECRET_7": [1, 2,"#,
        ));
        assert_clean(&m, "SECRET_7");
        // A wrong type below an invented key of a map-like body.
        let m = message(json::<std::collections::HashMap<String, u32>>(
            br#"{"SECRET_8": "x"}"#,
        ));
        assert_eq!(m, "a field has an invalid value (line 1, column 16)");
    }

    #[test]
    fn query_errors_name_the_parameter() {
        let m = message(query::<Q>("limit=SECRET9&cursor=x"));
        assert_eq!(m, "query parameter `limit` has an invalid value");
        assert_clean(&m, "SECRET9");
        let q: Q = query("limit=5&other=SECRET").unwrap();
        assert_eq!(q.limit, Some(5));
        let m = message(query::<Q>("limit=1&limit=2"));
        assert_eq!(m, "the query string has an invalid value");
    }
}
