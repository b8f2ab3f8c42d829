//! The one rule for a URL that is called with a secret: the client's
//! `--server` (the API key travels in the `Authorization` header) and the
//! destination webhook URLs the server stores (called later with a secret).
//!
//! The rule is applied to the URL as a real URL parser (WHATWG, the `url`
//! crate, the same parser `reqwest` uses) reads it, never to a hand split of
//! the text, so the host that is checked is the host that is connected to:
//!
//! - the scheme is `https`, or `http` only when the parsed host is a loopback
//!   address: an IPv4 address in `127.0.0.0/8`, the IPv6 address `::1`, or
//!   the name `localhost` exactly (after the parser's lower-casing; not
//!   `localhost.`, not `*.localhost`). IPv4-mapped IPv6 (`[::ffff:127.0.0.1]`)
//!   is refused: it is an alias nobody needs. The name `localhost` is
//!   accepted on the condition that **the caller never resolves it through
//!   DNS** (a search domain or a tampered resolver could send it elsewhere):
//!   it must pin it to [`LOOPBACK_ADDRS`], as the client does;
//! - no user-info (`user@`, `user:password@`) — and, to leave no room for a
//!   parser that splits the authority differently, no `@` anywhere in the
//!   text (percent-encode one in a path as `%40`);
//! - no query and no fragment (a base URL has neither; a secret in a query
//!   would end up in logs);
//! - no backslash, whitespace or control character anywhere (parsers differ on
//!   them; WHATWG reads `\` as `/` in http URLs and drops tabs and newlines);
//! - at most [`MAX_URL_BYTES`] bytes.
//!
//! Numeric host forms the parser canonicalises (`0x7f.1`, `2130706433`,
//! `%31%32%37.0.0.1`, `127.0.0.1.`) are judged by the address they parse to:
//! the returned [`Url`] carries the canonical form (`127.0.0.1`), which is
//! what callers must use from then on.
//!
//! Pure: no I/O, no name resolution.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use thiserror::Error;
pub use url::Url;

/// The longest URL text accepted.
pub const MAX_URL_BYTES: usize = 2048;

/// The only host name accepted for plain `http`.
pub const LOCALHOST: &str = "localhost";

/// Where a caller must send `localhost`, instead of asking a resolver.
pub const LOOPBACK_ADDRS: [IpAddr; 2] = [
    IpAddr::V4(Ipv4Addr::LOCALHOST),
    IpAddr::V6(Ipv6Addr::LOCALHOST),
];

/// Why a URL may not be called with a secret. The texts never repeat the URL
/// (it may hold a password); they say what to change.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum EndpointError {
    /// Longer than [`MAX_URL_BYTES`].
    #[error("the URL is longer than {MAX_URL_BYTES} bytes")]
    TooLong,
    /// A character parsers disagree on.
    #[error("the URL contains {0}; write it without")]
    ForbiddenCharacter(&'static str),
    /// `user@` or `user:password@` before the host.
    #[error("the URL carries user-info (`user@` or `user:password@`, or an `@` elsewhere); credentials go in the key, never in the URL (percent-encode an `@` in a path as %40)")]
    UserInfo,
    /// The parser refused the text.
    #[error("the URL does not parse ({0}); expected e.g. https://onboard.example:8443")]
    NotAUrl(url::ParseError),
    /// Neither `https` nor `http`.
    #[error("the URL's scheme is `{0}`; only https (or http to a loopback address) is allowed")]
    Scheme(String),
    /// `?…` or `#…`.
    #[error("the URL has a query (`?`) or fragment (`#`); give the base URL only")]
    QueryOrFragment,
    /// Plain `http` to a host that is not a loopback address.
    #[error("plain http is allowed only to a loopback address (127.0.0.0/8, [::1] or localhost), and the host is `{0}`; use https")]
    PlainHttpNotLoopback(String),
    /// A webhook URL that is not `https`.
    #[error("a webhook URL must be https")]
    WebhookNotHttps,
}

impl EndpointError {
    /// A stable kebab-case code for each refusal.
    pub fn code(&self) -> &'static str {
        match self {
            Self::TooLong => "too-long",
            Self::ForbiddenCharacter(_) => "forbidden-character",
            Self::UserInfo => "user-info",
            Self::NotAUrl(_) => "not-a-url",
            Self::Scheme(_) => "scheme",
            Self::QueryOrFragment => "query-or-fragment",
            Self::PlainHttpNotLoopback(_) => "plain-http-not-loopback",
            Self::WebhookNotHttps => "webhook-not-https",
        }
    }
}

/// Check `text` against the rule of this module and return the parsed URL,
/// in canonical form, to be used instead of `text`.
pub fn check_secret_url(text: &str) -> Result<Url, EndpointError> {
    if text.len() > MAX_URL_BYTES {
        return Err(EndpointError::TooLong);
    }
    if let Some(what) = text.chars().find_map(forbidden_character) {
        return Err(EndpointError::ForbiddenCharacter(what));
    }
    if text.contains('@') {
        return Err(EndpointError::UserInfo);
    }
    let url = Url::parse(text).map_err(EndpointError::NotAUrl)?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(EndpointError::UserInfo);
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(EndpointError::QueryOrFragment);
    }
    match url.scheme() {
        "https" => Ok(url),
        "http" if is_loopback_host(&url) => Ok(url),
        "http" => Err(EndpointError::PlainHttpNotLoopback(
            url.host_str().unwrap_or_default().to_owned(),
        )),
        other => Err(EndpointError::Scheme(other.chars().take(32).collect())),
    }
}

/// The rule for a destination's webhook URL: [`check_secret_url`], and
/// `https` only (no plain http, not even to a loopback address). Whether
/// the host's addresses may be called is the caller's check, on the
/// addresses it resolves ([`is_forbidden_target`]).
pub fn check_webhook_url(text: &str) -> Result<Url, EndpointError> {
    let url = check_secret_url(text)?;
    if url.scheme() != "https" {
        return Err(EndpointError::WebhookNotHttps);
    }
    Ok(url)
}

/// Whether a server-side request must not go to `ip` (unless the operator
/// allows private targets): loopback, private (RFC 1918, IPv6 unique local),
/// link-local, shared (100.64.0.0/10), multicast, broadcast, unspecified,
/// and IPv4-mapped or -compatible IPv6 forms of those.
pub fn is_forbidden_target(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => forbidden_v4(a),
        IpAddr::V6(a) => {
            if let Some(v4) = a.to_ipv4() {
                // `::ffff:a.b.c.d` and `::a.b.c.d` reach the IPv4 host.
                return forbidden_v4(v4) || a.is_unspecified() || a.is_loopback();
            }
            a.is_loopback()
                || a.is_unspecified()
                || a.is_multicast()
                || a.is_unique_local()
                || a.is_unicast_link_local()
        }
    }
}

fn forbidden_v4(a: Ipv4Addr) -> bool {
    let [first, second, ..] = a.octets();
    a.is_loopback()
        || a.is_private()
        || a.is_link_local()
        || a.is_multicast()
        || a.is_broadcast()
        || a.is_unspecified()
        || first == 0
        || (first == 100 && (64..128).contains(&second))
}

/// Whether the parsed host is `127.0.0.0/8`, `::1` or exactly `localhost`.
pub fn is_loopback_host(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(a)) => a.is_loopback(),
        // `Ipv6Addr::is_loopback` is `::1` only: mapped forms are refused.
        Some(url::Host::Ipv6(a)) => a.is_loopback(),
        Some(url::Host::Domain(name)) => name == LOCALHOST,
        None => false,
    }
}

fn forbidden_character(c: char) -> Option<&'static str> {
    if c == '\\' {
        Some("a backslash")
    } else if c.is_whitespace() {
        Some("whitespace")
    } else if c.is_control() {
        Some("a control character")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn host_of(text: &str) -> String {
        let url = check_secret_url(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        url.host_str().unwrap().to_owned()
    }

    fn refused(text: &str) -> EndpointError {
        match check_secret_url(text) {
            Ok(url) => panic!("{text} accepted as {url}"),
            Err(e) => e,
        }
    }

    #[test]
    fn webhook_urls_are_https_only() {
        assert!(check_webhook_url("https://dsp.example/hooks/onboard").is_ok());
        for text in ["http://127.0.0.1/hook", "http://localhost/hook"] {
            assert_eq!(
                check_webhook_url(text).unwrap_err(),
                EndpointError::WebhookNotHttps
            );
        }
        assert_eq!(
            check_webhook_url("https://user@dsp.example").unwrap_err(),
            EndpointError::UserInfo
        );
    }

    #[test]
    fn private_targets_are_forbidden_and_public_ones_are_not() {
        for text in [
            "127.0.0.1",
            "127.9.9.9",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "0.1.2.3",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fc00::1",
            "fd12::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
        ] {
            let ip: IpAddr = text.parse().unwrap();
            assert!(is_forbidden_target(ip), "{text} allowed");
        }
        for text in ["93.184.216.34", "8.8.8.8", "100.128.0.1", "2606:4700::1111"] {
            let ip: IpAddr = text.parse().unwrap();
            assert!(!is_forbidden_target(ip), "{text} forbidden");
        }
    }

    #[test]
    fn user_info_is_refused_in_every_form() {
        for text in [
            "http://127.0.0.1:80@evil.example",
            "http://user:pw@127.0.0.1",
            "http://127.0.0.1@evil.example/",
            "http://@127.0.0.1/",
            "https://user@onboard.example",
            "https://onboard.example/a@b",
            "http://127.0.0.1%40evil.example",
        ] {
            let e = refused(text);
            // The last one is percent-encoded: the parser refuses `@` in a host.
            assert!(
                matches!(e, EndpointError::UserInfo | EndpointError::NotAUrl(_)),
                "{text}: {e:?}"
            );
        }
        assert_eq!(
            refused("http://127.0.0.1:80@evil.example"),
            EndpointError::UserInfo
        );
    }

    #[test]
    fn look_alike_hosts_are_refused_for_plain_http() {
        for (text, host) in [
            ("http://127.0.0.1.evil.example", "127.0.0.1.evil.example"),
            ("http://127.0.0.1%2eevil.example", "127.0.0.1.evil.example"),
            ("http://localhost.", "localhost."),
            ("http://localhost.evil.example", "localhost.evil.example"),
            ("http://evil.localhost", "evil.localhost"),
            ("http://[::ffff:127.0.0.1]", "[::ffff:7f00:1]"),
            ("http://0", "0.0.0.0"),
            ("http://[::]", "[::]"),
            ("http://128.0.0.1", "128.0.0.1"),
            ("http://example.com", "example.com"),
        ] {
            assert_eq!(
                refused(text),
                EndpointError::PlainHttpNotLoopback(host.into()),
                "{text}"
            );
        }
    }

    #[test]
    fn loopback_forms_are_accepted_in_canonical_form() {
        for (text, host) in [
            ("http://127.0.0.1:8080", "127.0.0.1"),
            ("http://[::1]:8443", "[::1]"),
            ("HTTP://127.0.0.1", "127.0.0.1"),
            ("http://LOCALHOST", "localhost"),
            ("http://%31%32%37.0.0.1", "127.0.0.1"),
            ("http://127.0.0.1.", "127.0.0.1"),
            ("http://0x7f.1", "127.0.0.1"),
            ("http://2130706433", "127.0.0.1"),
            ("http://127.1", "127.0.0.1"),
            ("http://127.255.255.254", "127.255.255.254"),
            ("http://[0:0:0:0:0:0:0:1]", "[::1]"),
            ("http://local%68ost", "localhost"),
        ] {
            assert_eq!(host_of(text), host, "{text}");
        }
        assert_eq!(
            check_secret_url("HTTP://127.0.0.1/").unwrap().as_str(),
            "http://127.0.0.1/"
        );
    }

    #[test]
    fn https_goes_anywhere() {
        assert_eq!(host_of("https://anything.example"), "anything.example");
        assert_eq!(
            host_of("https://onboard.example:8443/base/"),
            "onboard.example"
        );
        assert_eq!(host_of("HTTPS://ONBOARD.example"), "onboard.example");
    }

    #[test]
    fn other_refusals_name_the_problem() {
        assert_eq!(
            refused("http:\\\\127.0.0.1\\"),
            EndpointError::ForbiddenCharacter("a backslash")
        );
        assert_eq!(
            refused("http://127.0.0.1\\@evil.example"),
            EndpointError::ForbiddenCharacter("a backslash")
        );
        assert_eq!(
            refused("http://127.0.0.1\t.evil.example"),
            EndpointError::ForbiddenCharacter("whitespace")
        );
        assert_eq!(
            refused("http://127.0.0.1\u{0}"),
            EndpointError::ForbiddenCharacter("a control character")
        );
        assert_eq!(
            refused(" https://x.example"),
            EndpointError::ForbiddenCharacter("whitespace")
        );
        assert_eq!(
            refused("ftp://x.example"),
            EndpointError::Scheme("ftp".into())
        );
        assert_eq!(
            refused("file:///etc/passwd"),
            EndpointError::Scheme("file".into())
        );
        assert_eq!(
            refused("javascript:alert(1)"),
            EndpointError::Scheme("javascript".into())
        );
        assert!(matches!(
            refused("127.0.0.1:8443"),
            EndpointError::Scheme(_) | EndpointError::NotAUrl(_)
        ));
        assert!(matches!(
            refused("onboard.example"),
            EndpointError::NotAUrl(_)
        ));
        assert!(matches!(refused("http://"), EndpointError::NotAUrl(_)));
        assert!(matches!(refused("http://[::1"), EndpointError::NotAUrl(_)));
        assert_eq!(
            refused("https://x.example/?k=v"),
            EndpointError::QueryOrFragment
        );
        assert_eq!(
            refused("https://x.example/?"),
            EndpointError::QueryOrFragment
        );
        assert_eq!(
            refused("https://x.example/#f"),
            EndpointError::QueryOrFragment
        );
        assert_eq!(
            refused(&format!("https://x.example/{}", "a".repeat(MAX_URL_BYTES))),
            EndpointError::TooLong
        );
    }

    #[test]
    fn messages_never_repeat_a_password() {
        for text in ["http://u:hunter2@127.0.0.1", "https://u:hunter2@x.example"] {
            let e = refused(text);
            assert!(!e.to_string().contains("hunter2"), "{e}");
        }
    }

    /// An oracle independent of the parser's API: the canonical text of an
    /// accepted plain-http URL has a loopback authority and nothing else.
    fn authority_is_loopback(serialized: &str) -> bool {
        let Some(rest) = serialized.strip_prefix("http://") else {
            return false;
        };
        let authority = rest.split('/').next().unwrap_or_default();
        let host = match authority.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && !host.ends_with(':') => {
                if !port.chars().all(|c| c.is_ascii_digit()) {
                    return false;
                }
                host
            }
            _ => authority,
        };
        host == "localhost"
            || host == "[::1]"
            || host.parse::<Ipv4Addr>().is_ok_and(|a| a.octets()[0] == 127)
    }

    const PIECES: [&str; 32] = [
        "http://",
        "https://",
        "HTTP://",
        "127.0.0.1",
        "127.1",
        "0x7f",
        "localhost",
        "LOCALHOST",
        "[::1]",
        "[::ffff:127.0.0.1]",
        "evil.example",
        ".",
        ":",
        ":80",
        "@",
        "%40",
        "%2e",
        "%31",
        "/",
        "//",
        "\\",
        "?",
        "#",
        "%",
        "[",
        "]",
        "0",
        "2130706433",
        "user",
        "pw",
        "a",
        "%2f",
    ];

    fn piece() -> impl Strategy<Value = &'static str> {
        prop::sample::select(PIECES.to_vec())
    }

    /// The property of [`accepted_plain_http_only_reaches_loopback`] for one text;
    /// `Some(true)` when accepted as plain http.
    fn judge(text: &str) -> Result<Option<bool>, String> {
        let Ok(url) = check_secret_url(text) else {
            return Ok(None);
        };
        if !url.username().is_empty() || url.password().is_some() {
            return Err(format!("{text}: user-info kept"));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(format!("{text}: query or fragment kept"));
        }
        match url.scheme() {
            "https" => Ok(Some(false)),
            "http" if !authority_is_loopback(url.as_str()) => {
                Err(format!("{text} -> {url}: not a loopback authority"))
            }
            // What reqwest does: parse the canonical text again.
            "http"
                if Url::parse(url.as_str())
                    .ok()
                    .and_then(|u| u.host_str().map(str::to_owned))
                    .as_deref()
                    != url.host_str() =>
            {
                Err(format!("{text} -> {url}: parses to another host"))
            }
            "http" => Ok(Some(true)),
            other => Err(format!("{text}: scheme {other}")),
        }
    }

    #[test]
    fn every_text_of_up_to_three_pieces_is_judged_safely() {
        let (mut plain, mut tls) = (0, 0);
        for a in PIECES {
            for b in PIECES {
                for c in PIECES.iter().copied().chain([""]) {
                    match judge(&format!("{a}{b}{c}")) {
                        Ok(Some(true)) => plain += 1,
                        Ok(Some(false)) => tls += 1,
                        Ok(None) => {}
                        Err(e) => panic!("{e}"),
                    }
                }
            }
        }
        // The property was exercised, not vacuously true.
        assert!(plain > 50 && tls > 50, "plain {plain}, https {tls}");
    }

    proptest! {
        #[test]
        fn accepted_plain_http_only_reaches_loopback(pieces in prop::collection::vec(piece(), 4..10)) {
            let text: String = pieces.concat();
            if let Err(e) = judge(&text) {
                prop_assert!(false, "{}", e);
            }
        }

        #[test]
        fn any_text_is_judged_without_panic(text in "\\PC{0,80}") {
            let _ = check_secret_url(&text);
        }

        #[test]
        fn loopback_v4_with_any_port_is_accepted(b in any::<u8>(), c in any::<u8>(), d in any::<u8>(), port in 1u16..) {
            let text = format!("http://127.{b}.{c}.{d}:{port}");
            prop_assert!(check_secret_url(&text).is_ok(), "{text}");
        }

        #[test]
        fn non_loopback_v4_is_refused_for_http(a in any::<u8>().prop_filter("not 127", |a| *a != 127), b in any::<u8>()) {
            let text = format!("http://{a}.{b}.0.1");
            prop_assert!(
                matches!(check_secret_url(&text), Err(EndpointError::PlainHttpNotLoopback(_))),
                "{text}"
            );
        }
    }
}
