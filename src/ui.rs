//! The web UI at `/ui/` (store nodes): a static page, a stylesheet and an ES module, embedded
//! in the binary and served as they are (no build step). The page talks to `../store/*`.

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

const INDEX: &str = include_str!("../ui/index.html");
const APP: &str = include_str!("../ui/app.js");
const STYLE: &str = include_str!("../ui/style.css");

/// The `/ui` routes.
pub fn router() -> Router {
    Router::new()
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route("/ui/", get(|| async { asset("index.html") }))
        .route(
            "/ui/{*path}",
            get(|Path(p): Path<String>| async move { asset(&p) }),
        )
}

/// One embedded file by name; a path without an extension is the page (links into the page
/// keep working), any other unknown name is a 404.
fn asset(path: &str) -> Response {
    let (body, kind) = match path {
        "app.js" => (APP, "text/javascript; charset=utf-8"),
        "style.css" => (STYLE, "text/css; charset=utf-8"),
        p if p == "index.html" || !p.contains('.') => (INDEX, "text/html; charset=utf-8"),
        _ => return crate::http::text(StatusCode::NOT_FOUND, "404 page not found\n"),
    };
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    // The files change with the binary: always revalidate.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}
