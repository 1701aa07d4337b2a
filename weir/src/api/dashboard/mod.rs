//! The live page at `/`: what the hub is doing, for operators, without Prometheus.
//!
//! One static HTML page (`page.html`, plain JavaScript, no build step) that opens
//! `/dashboard/stream`, a server-sent event stream with a snapshot of the hub's counters
//! every second, and plots the last minutes from them. Everything is behind the service
//! credential: a request carries a service SAS token (as the REST API takes it), or the
//! `weir_dashboard` cookie set by signing in, either with a connection string on the
//! sign-in page or through the short-lived link `weir dashboard` prints.

pub mod peers;
pub mod snapshot;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::{Extension, Form, Json};
use serde::Deserialize;
use weir_gateways::sas;

use super::ApiState;
use super::auth::verify_service;
use super::ws::Secure;

const PAGE: &str = include_str!("page.html");
const SIGN_IN: &str = include_str!("sign_in.html");
const COOKIE: &str = "weir_dashboard";
/// How long signing in with a connection string lasts.
const SESSION_SECS: i64 = 8 * 3600;
const TICK: Duration = Duration::from_secs(1);

/// The service SAS token the request carries: `Authorization`, or the sign-in cookie.
fn credential(headers: &HeaderMap) -> Option<String> {
    if let Some(h) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        return Some(h.to_owned());
    }
    let cookies = headers.get_all(header::COOKIE);
    cookies
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('='))
        .and_then(|v| percent_encoding::percent_decode_str(v).decode_utf8().ok())
        .map(|v| v.into_owned())
}

fn signed_in(s: &ApiState, headers: &HeaderMap) -> bool {
    credential(headers).is_some_and(|t| verify_service(s, &t).is_ok())
}

/// The sign-in page, with what went wrong.
fn sign_in_page(error: &str) -> Response {
    let body = SIGN_IN.replace("{{error}}", &html_escape(error));
    (StatusCode::UNAUTHORIZED, Html(body)).into_response()
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Signs the browser in with `token` (already verified) and sends it to the page: the
/// token leaves the address bar and history.
fn session(token: &str, max_age: i64, secure: bool) -> Response {
    let value = percent_encoding::utf8_percent_encode(token, percent_encoding::NON_ALPHANUMERIC);
    let cookie = format!(
        "{COOKIE}={value}; Path=/; Max-Age={}; HttpOnly; SameSite=Strict{}",
        max_age.max(0),
        if secure { "; Secure" } else { "" }
    );
    let mut resp = (StatusCode::SEE_OTHER, [(header::LOCATION, "/")]).into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

#[derive(Deserialize)]
pub struct PageQuery {
    token: Option<String>,
}

/// `GET /`: the page when signed in; `?token=` (from `weir dashboard`) signs in; the
/// sign-in page otherwise.
pub async fn page(
    State(s): State<Arc<ApiState>>,
    Extension(Secure(secure)): Extension<Secure>,
    Query(q): Query<PageQuery>,
    headers: HeaderMap,
) -> Response {
    if let Some(token) = q.token {
        return match verify_service(&s, &token) {
            Ok(()) => {
                let left = sas::parse(&token)
                    .ok()
                    .map(|t| t.expiry)
                    .map_or(0, |se| se - weir_core::time::now_secs());
                session(&token, left, secure)
            }
            Err(e) => sign_in_page(&format!("the link does not sign in: {}", e.message)),
        };
    }
    if !signed_in(&s, &headers) {
        return sign_in_page("");
    }
    let mut resp = Html(PAGE).into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

#[derive(Deserialize)]
pub struct SignIn {
    connection_string: String,
}

/// `POST /dashboard/sign-in`: a service connection string (as `weir serve` writes to
/// `iothubowner.connstr`) signs the browser in for [`SESSION_SECS`].
pub async fn sign_in(
    State(s): State<Arc<ApiState>>,
    Extension(Secure(secure)): Extension<Secure>,
    Form(f): Form<SignIn>,
) -> Response {
    let field = |n| crate::serve::connstr_field(&f.connection_string, n);
    let (Some(policy), Some(key)) = (field("SharedAccessKeyName"), field("SharedAccessKey")) else {
        return sign_in_page(
            "that is not a service connection string (HostName=...;SharedAccessKeyName=...;SharedAccessKey=...)",
        );
    };
    let expiry = weir_core::time::now_secs() + SESSION_SECS;
    let token = match sas::build(&s.hostname, key, expiry, Some(policy)) {
        Ok(t) => t,
        Err(_) => return sign_in_page("the key in that connection string is not base64"),
    };
    match verify_service(&s, &token) {
        Ok(()) => session(&token, SESSION_SECS, secure),
        Err(e) => sign_in_page(&format!("not signed in: {}", e.message)),
    }
}

/// `POST /dashboard/sign-out`.
pub async fn sign_out(Extension(Secure(secure)): Extension<Secure>) -> Response {
    session("", 0, secure)
}

/// `GET /dashboard/snapshot`: the counters now, as JSON.
pub async fn snapshot(State(s): State<Arc<ApiState>>, headers: HeaderMap) -> Response {
    if !signed_in(&s, &headers) {
        return refused();
    }
    Json(snapshot::take(&s)).into_response()
}

fn refused() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        "sign in at / with a service connection string, or use the link `weir dashboard` prints\n",
    )
        .into_response()
}

/// `GET /dashboard/stream`: a snapshot every second as server-sent events, until the
/// credential expires (the page then shows the sign-in link).
pub async fn stream(State(s): State<Arc<ApiState>>, headers: HeaderMap) -> Response {
    let Some(token) = credential(&headers).filter(|t| verify_service(&s, t).is_ok()) else {
        return refused();
    };
    let ticks = tokio::time::interval(TICK);
    let events =
        futures_util::stream::unfold((s, ticks, token), |(s, mut ticks, token)| async move {
            ticks.tick().await;
            // A session ends when its token does.
            verify_service(&s, &token).ok()?;
            let data = snapshot::take(&s).to_string();
            Some((
                Ok::<_, Infallible>(Event::default().data(data)),
                (s, ticks, token),
            ))
        });
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_credential_comes_from_the_header_or_the_sign_in_cookie() {
        let mut h = HeaderMap::new();
        assert_eq!(credential(&h), None);
        h.insert(
            header::COOKIE,
            HeaderValue::from_static(
                "theme=dark; weir_dashboard=SharedAccessSignature%20sr%3Dhub; x=1",
            ),
        );
        assert_eq!(
            credential(&h).as_deref(),
            Some("SharedAccessSignature sr=hub")
        );
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("SharedAccessSignature sr=other"),
        );
        assert_eq!(
            credential(&h).as_deref(),
            Some("SharedAccessSignature sr=other")
        );
        let mut other = HeaderMap::new();
        other.insert(
            header::COOKIE,
            HeaderValue::from_static("weir_dashboardx=1; not_weir_dashboard=2"),
        );
        assert_eq!(credential(&other), None);
        assert_eq!(
            html_escape("<b a=\"1\">&"),
            "&lt;b a=&quot;1&quot;&gt;&amp;"
        );
    }
}
