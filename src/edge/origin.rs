//! Which browser origins may call the gateway: one rule for CORS (who may read answers)
//! and for the cross-site check (who may change anything).

use crate::config::CorsOrigins;
use crate::error::RequestError;
use actix_web::http::header::{HeaderMap, ORIGIN};

/// Whether a request that changes something (a turn, a stop, a deletion) may come from
/// where the browser says it comes from: its `Origin`, or without one its `Sec-Fetch-Site`.
/// `host` is the request's own, already allowed host.
///
/// CORS alone does not cover this: it keeps a foreign page from reading an answer, not
/// from sending the request, and a `text/plain` form post is sent without a preflight.
/// A client that sends neither header (curl, an SDK) is no browser and is let through.
pub fn check(headers: &HeaderMap, cors: &CorsOrigins, host: Option<&str>) -> Result<(), RequestError> {
    let mut origins = headers.get_all(ORIGIN).peekable();
    if origins.peek().is_none() {
        let site = headers.get("sec-fetch-site").map(|v| v.as_bytes());
        return match site {
            Some(site) if site.eq_ignore_ascii_case(b"cross-site") => {
                Err(RequestError::CrossSite("not sent, Sec-Fetch-Site: cross-site".into()))
            }
            _ => Ok(()),
        };
    }
    for origin in origins {
        let origin = origin.to_str().unwrap_or("(not text)");
        if !may_change_state(cors, origin, host) {
            return Err(RequestError::CrossSite(origin.to_owned()));
        }
    }
    Ok(())
}

/// An origin CORS allows, or the gateway's own: the page it serves calls it from
/// `http(s)://<the Host it was reached by>`, whatever name that is. `null` never is, even
/// with `*`: it is what sandboxed frames, `file:` pages and redirected requests send, so it
/// names no page anyone chose to trust.
fn may_change_state(cors: &CorsOrigins, origin: &str, host: Option<&str>) -> bool {
    origin != "null" && (same_origin(origin, host) || cors_allows(cors, origin))
}

/// Whether the CORS setting names `origin`.
pub fn cors_allows(cors: &CorsOrigins, origin: &str) -> bool {
    match cors {
        CorsOrigins::Any => true,
        CorsOrigins::Localhost => is_local_origin(origin),
        CorsOrigins::List(list) => list.iter().any(|o| o.eq_ignore_ascii_case(origin)),
    }
}

fn same_origin(origin: &str, host: Option<&str>) -> bool {
    let Some(host) = host else {
        return false;
    };
    ["http://", "https://"].iter().any(|scheme| {
        origin
            .strip_prefix(scheme)
            .is_some_and(|rest| rest.eq_ignore_ascii_case(host))
    })
}

/// `http(s)://localhost`, `127.0.0.1` or `[::1]`, with any port.
fn is_local_origin(origin: &str) -> bool {
    let Some(rest) = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
    else {
        return false;
    };
    let host = match rest.rsplit_once(':') {
        Some((host, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => rest,
    };
    matches!(host, "localhost" | "127.0.0.1" | "[::1]")
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::HeaderValue;

    #[test]
    fn local_origins_with_any_port_and_nothing_else() {
        for ok in [
            "http://localhost",
            "http://localhost:5173",
            "https://127.0.0.1:8443",
            "http://[::1]:3000",
        ] {
            assert!(is_local_origin(ok), "{ok}");
        }
        for bad in [
            "http://localhost.evil.com",
            "http://evil.com",
            "http://127.0.0.1.nip.io:80",
            "file://localhost",
            "null",
            "http://localhost:80x",
        ] {
            assert!(!is_local_origin(bad), "{bad}");
        }
    }

    #[test]
    fn the_gateways_own_origin_may_change_state_under_any_host_name() {
        let local = CorsOrigins::Localhost;
        let host = Some("chat.example.com:8000");
        assert!(may_change_state(&local, "http://chat.example.com:8000", host));
        assert!(may_change_state(&local, "https://CHAT.example.com:8000", host));
        assert!(
            !may_change_state(&local, "http://chat.example.com", host),
            "another port"
        );
        assert!(!may_change_state(&local, "http://evil.example", host));
        assert!(may_change_state(&local, "http://localhost:5173", host));
        assert!(!may_change_state(&local, "http://chat.example.com:8000", None));
    }

    #[test]
    fn null_is_never_trusted_and_a_list_replaces_the_localhost_default() {
        assert!(!may_change_state(&CorsOrigins::Any, "null", Some("null")));
        assert!(may_change_state(&CorsOrigins::Any, "https://anyone.example", None));
        let list = CorsOrigins::List(vec!["https://chat.example".into()]);
        assert!(may_change_state(&list, "https://chat.example", None));
        assert!(!may_change_state(&list, "http://localhost:5173", None));
    }

    #[test]
    fn without_an_origin_only_a_cross_site_fetch_is_refused() {
        let cors = CorsOrigins::Localhost;
        let with = |name: &'static str, value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(name.parse().unwrap(), HeaderValue::from_static(value));
            check(&headers, &cors, Some("127.0.0.1:8000"))
        };
        assert!(check(&HeaderMap::new(), &cors, None).is_ok(), "curl sends neither");
        assert!(with("sec-fetch-site", "cross-site").is_err());
        for site in ["same-origin", "same-site", "none"] {
            assert!(with("sec-fetch-site", site).is_ok(), "{site}");
        }
        assert!(with("origin", "null").is_err());
        assert!(with("origin", "http://127.0.0.1:8000").is_ok());
    }
}
