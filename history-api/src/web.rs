//! The live page at `/`: plain HTML, JavaScript and CSS from `history-api/web/`, compiled into the
//! binary so that it works without a build step, a CDN or any network but this server's.
//!
//! The page reads `/v1/ticks` and `/v1/stream` on the same origin, so its Content-Security-Policy
//! allows this origin only. Its files change only with the binary: each carries a strong entity
//! tag and `Cache-Control: no-cache`, so a browser keeps them and asks each time, and is answered
//! `304 Not Modified` until the server is upgraded.

use std::sync::LazyLock;

use axum::Router;
use axum::http::StatusCode;
use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, ETAG, HeaderMap, HeaderValue,
    REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS,
};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::conditional;

/// Nothing from another origin, no inline script or style, no plugins, no framing, no forms.
const POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

/// One file of the page.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const ASSETS: [Asset; 4] = [
    Asset {
        path: "/",
        content_type: "text/html; charset=utf-8",
        body: include_bytes!("../web/index.html"),
    },
    Asset {
        path: "/app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../web/app.js"),
    },
    Asset {
        path: "/style.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../web/style.css"),
    },
    Asset {
        path: "/favicon.svg",
        content_type: "image/svg+xml",
        body: include_bytes!("../web/favicon.svg"),
    },
];

/// Each asset's entity tag, computed once.
static ETAGS: LazyLock<[HeaderValue; 4]> =
    LazyLock::new(|| ASSETS.each_ref().map(|asset| conditional::etag(asset.body)));

/// The page's routes, for any router state.
pub(crate) fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    ASSETS
        .iter()
        .enumerate()
        .fold(Router::new(), |router, (index, asset)| {
            router.route(
                asset.path,
                get(move |headers: HeaderMap| async move { answer(index, &headers) }),
            )
        })
}

fn answer(index: usize, headers: &HeaderMap) -> Response {
    let asset = &ASSETS[index];
    let etag = ETAGS[index].clone();
    let common = [
        (CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (ETAG, etag.clone()),
        (CONTENT_SECURITY_POLICY, HeaderValue::from_static(POLICY)),
        (X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        (REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
    ];
    if conditional::none_match(headers, &etag) {
        return (StatusCode::NOT_MODIFIED, common).into_response();
    }
    (
        common,
        [(CONTENT_TYPE, HeaderValue::from_static(asset.content_type))],
        asset.body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file the page names is one the server serves, and no other origin is named.
    #[test]
    fn the_page_names_only_its_own_files() {
        let html = std::str::from_utf8(ASSETS[0].body).unwrap();
        for asset in &ASSETS[1..] {
            let name = asset.path.trim_start_matches('/');
            assert!(
                html.contains(&format!("\"{name}\"")),
                "{name} is not linked"
            );
        }
        for asset in &ASSETS {
            let text = std::str::from_utf8(asset.body).unwrap();
            for scheme in ["http:", "https:", "//cdn", "@import"] {
                let outside: Vec<&str> = text
                    .lines()
                    .filter(|l| l.contains(scheme) && !l.contains("http://www.w3.org/2000/svg"))
                    .collect();
                assert!(outside.is_empty(), "{}: {outside:?}", asset.path);
            }
        }
    }
}
