//! The live page's files: served from the binary with their types, a Content-Security-Policy of
//! this origin only, and entity tags a browser revalidates with; each as `openapi.json` says.

mod common;

use axum::http::StatusCode;
use common::*;
use history_api::{OPENAPI, app};
use serde_json::Value;

/// Each file of the page and the type it is served as.
const FILES: [(&str, &str); 4] = [
    ("/", "text/html; charset=utf-8"),
    ("/app.js", "text/javascript; charset=utf-8"),
    ("/style.css", "text/css; charset=utf-8"),
    ("/favicon.svg", "image/svg+xml"),
];

const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
    connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

#[tokio::test]
async fn the_page_and_its_files_are_served_with_their_types_policy_and_tags() {
    let app = app(state(store_with(0).await));
    let page = get(&app, "/").await;
    for (path, content_type) in FILES {
        let answer = get(&app, path).await;
        assert_eq!(answer.status, StatusCode::OK, "{path}");
        assert_eq!(answer.content_type(), content_type, "{path}");
        assert_eq!(answer.header("content-security-policy"), POLICY, "{path}");
        assert_eq!(answer.header("x-content-type-options"), "nosniff", "{path}");
        assert_eq!(answer.header("cache-control"), "no-cache", "{path}");
        assert!(!answer.body.is_empty(), "{path}");
        if path != "/" {
            let name = format!("\"{}\"", &path[1..]);
            assert!(page.text().contains(&name), "the page links {name}");
        }

        // A browser that holds the file asks with its tag and gets no body; any other tag, or
        // none that parses, gets the file.
        let etag = answer.header("etag").to_string();
        assert_eq!(etag.len(), 18, "{path}: {etag}");
        let held = get_with(&app, path, &[("if-none-match", &etag)]).await;
        assert_eq!(held.status, StatusCode::NOT_MODIFIED, "{path}");
        assert!(held.body.is_empty());
        assert_eq!(held.header("etag"), etag);
        assert_eq!(held.header("cache-control"), "no-cache");
        for other in ["\"0000000000000000\"", "garbage"] {
            let changed = get_with(&app, path, &[("if-none-match", other)]).await;
            assert_eq!(changed.status, StatusCode::OK, "{path} with {other}");
            assert_eq!(changed.body, answer.body);
        }

        let head = request(&app, "HEAD", path).await;
        assert_eq!(head.status, StatusCode::OK, "HEAD {path}");
        assert!(head.body.is_empty(), "HEAD {path}");
        let post = request(&app, "POST", path).await;
        assert_eq!(post.status, StatusCode::METHOD_NOT_ALLOWED, "POST {path}");
    }
    // Only these paths: nothing else of the directory the files come from.
    for path in ["/index.html", "/web/app.js", "/app.js/", "/favicon.ico"] {
        assert_eq!(
            get(&app, path).await.status,
            StatusCode::NOT_FOUND,
            "{path}"
        );
    }
}

#[test]
fn the_document_describes_the_page_as_served() {
    let doc: Value = serde_json::from_str(OPENAPI).unwrap();
    for (path, content_type) in FILES {
        let responses = &doc["paths"][path]["get"]["responses"];
        assert!(
            responses["200"]["content"][content_type].is_object(),
            "{path}: {content_type} is not documented"
        );
        assert!(responses["304"].is_object(), "{path}: 304");
        let headers = responses["200"]["headers"].as_object().unwrap();
        let mut names: Vec<&String> = headers.keys().collect();
        names.sort();
        assert_eq!(names, ["Cache-Control", "Content-Security-Policy", "ETag"]);
        let described = headers["Content-Security-Policy"]["description"]
            .as_str()
            .unwrap();
        assert!(described.contains(POLICY), "{path}: {described}");
    }
}
