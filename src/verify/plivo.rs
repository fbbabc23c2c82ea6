//! Plivo Messaging (signature V3 and V2): signature verification.
//!
//! **V3** (`X-Plivo-Signature-V3`, `X-Plivo-Signature-Ma-V3` for the main account's token,
//! nonce in `X-Plivo-Signature-V3-Nonce`): base64(HMAC-SHA256(auth token, canonical + "." +
//! nonce)). The canonical string, as plivo-python `plivo/utils/signature_v3.py` and
//! plivo-node `lib/utils/v3Security.js` build it:
//! - base = `scheme://host[:port]/path` (query, fragment and `;params` dropped; the port is
//!   kept as given, never normalised);
//! - the URL's query parameters, decoded, sorted by name then value, re-joined as
//!   `name=value&…` (no re-encoding);
//! - POST: base + `?` + query + (`.` when both the query and the POST parameters are
//!   non-empty) + Σ sorted POST `namevalue`; with no POST parameters, base + (`?` + query
//!   only when the query is non-empty). Note the dangling `?` of a POST without a query;
//! - GET: the parameters are the query itself: base + (`?` + query when non-empty).
//!
//! The header may hold a comma-separated list (one signature per active token); any entry
//! matching any configured token passes.
//!
//! JSON bodies: Plivo's V3 helpers take the POST parameters as a dict, and Plivo's own
//! samples pass the parsed JSON body; a JSON object body is therefore signed as its members,
//! strings verbatim, other scalars as Python's `str()` (`True`, `False`, `None`, `1`, `1.5`),
//! nested objects as `name` + their own sorted string, arrays as one `namevalue` per sorted
//! element.
//!
//! **V2** (`X-Plivo-Signature-V2`, `-Ma-V2`, `-V2-Nonce`) — what Plivo's Messaging
//! documentation describes: base64(HMAC-SHA256(token, `scheme://host[:port]/path` + nonce)).
//! Neither the query nor the body is signed, so a captured header pair can be replayed with
//! any body: accepted only when the source sets `allow_v2 = true`, and only when no V3
//! header is present (V3 is preferred and never falls back to V2).
//!
//! No timestamp is signed: there is no replay window; redeliveries are caught by the dedup
//! of `MessageUUID` (+ `Status`, + part).

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

use super::{
    ct_eq, form_pairs, query_pairs, Method, SignRequest, Unverified, Verified, VerifyError,
};
use crate::config::plivo::PlivoSourceConfig;
use crate::crypto::Secret;

/// Content types (essence, lower case) this provider posts.
pub const MEDIA_TYPES: &[&str] = &["application/x-www-form-urlencoded", "application/json"];
/// Headers kept with a dead letter so that it can be re-verified on replay.
pub const SIGNATURE_HEADERS: &[&str] = &[
    HEADER_V3,
    HEADER_MA_V3,
    HEADER_V3_NONCE,
    HEADER_V2,
    HEADER_MA_V2,
    HEADER_V2_NONCE,
];
/// Whether the provider may deliver webhooks with GET (parameters in the query string).
pub const ACCEPTS_GET: bool = true;

pub const HEADER_V3: &str = "x-plivo-signature-v3";
pub const HEADER_MA_V3: &str = "x-plivo-signature-ma-v3";
pub const HEADER_V3_NONCE: &str = "x-plivo-signature-v3-nonce";
pub const HEADER_V2: &str = "x-plivo-signature-v2";
pub const HEADER_MA_V2: &str = "x-plivo-signature-ma-v2";
pub const HEADER_V2_NONCE: &str = "x-plivo-signature-v2-nonce";

/// Most signatures looked at in one request (Plivo sends one per active token).
const MAX_SIGNATURES: usize = 16;
/// Longest signature header looked at.
const MAX_HEADER_LEN: usize = 2048;
/// Deepest JSON nesting followed when building the canonical string.
const MAX_DEPTH: usize = 32;

/// What a Plivo source verifies with, built once from its configuration.
#[derive(Debug, Clone)]
pub struct Keys {
    auth_tokens: Vec<Secret>,
    allow_v2: bool,
}

impl Keys {
    pub fn from_config(c: &PlivoSourceConfig) -> Keys {
        Keys {
            auth_tokens: c.auth_tokens.clone(),
            allow_v2: c.allow_v2,
        }
    }
}

pub fn verify(req: Unverified, keys: &Keys) -> Result<Verified, VerifyError> {
    let h = req.headers();
    let v3: Vec<&str> = [h.get(HEADER_V3), h.get(HEADER_MA_V3)]
        .into_iter()
        .flatten()
        .collect();
    if !v3.is_empty() {
        let nonce = h.get(HEADER_V3_NONCE).ok_or(VerifyError::Missing)?;
        let presented = decode_signatures(&v3)?;
        let mut payload = v3_base(req.method(), req.url(), req.body())?;
        payload.push('.');
        payload.push_str(nonce);
        return check(&presented, &keys.auth_tokens, payload.as_bytes())
            .map(|()| req.into_verified());
    }
    let v2: Vec<&str> = [h.get(HEADER_V2), h.get(HEADER_MA_V2)]
        .into_iter()
        .flatten()
        .collect();
    if !v2.is_empty() {
        if !keys.allow_v2 {
            return Err(VerifyError::AlgorithmDisabled);
        }
        let nonce = h.get(HEADER_V2_NONCE).ok_or(VerifyError::Missing)?;
        let presented = decode_signatures(&v2)?;
        let payload = format!("{}{nonce}", base_url(req.url()));
        return check(&presented, &keys.auth_tokens, payload.as_bytes())
            .map(|()| req.into_verified());
    }
    Err(VerifyError::Missing)
}

/// Every comma-separated entry of the headers, base64-decoded; entries that are not a
/// SHA-256 MAC are skipped, and a header with none is malformed.
fn decode_signatures(headers: &[&str]) -> Result<Vec<Vec<u8>>, VerifyError> {
    let mut out = Vec::new();
    for header in headers {
        if header.len() > MAX_HEADER_LEN {
            return Err(VerifyError::Malformed);
        }
        for entry in header.split(',').take(MAX_SIGNATURES) {
            if let Ok(bytes) = B64.decode(entry.trim()) {
                if bytes.len() == 32 {
                    out.push(bytes);
                }
            }
        }
    }
    if out.is_empty() {
        Err(VerifyError::Malformed)
    } else {
        Ok(out)
    }
}

fn check(presented: &[Vec<u8>], tokens: &[Secret], payload: &[u8]) -> Result<(), VerifyError> {
    let ok = tokens.iter().any(|t| {
        let expected = hmac_sha256(t.expose().as_bytes(), payload);
        presented.iter().any(|p| ct_eq(&expected, p))
    });
    if ok {
        Ok(())
    } else {
        Err(VerifyError::Mismatch)
    }
}

fn hmac_sha256(key: &[u8], payload: &[u8]) -> Vec<u8> {
    match Hmac::<Sha256>::new_from_slice(key) {
        Ok(mut mac) => {
            mac.update(payload);
            mac.finalize().into_bytes().to_vec()
        }
        Err(_) => Vec::new(),
    }
}

/// `scheme://netloc/path`: query, fragment and the last segment's `;params` dropped, as
/// Python's `urlunparse((scheme, netloc, path, '', '', ''))` rebuilds it.
pub fn base_url(url: &str) -> String {
    let end = url.find(['?', '#']).unwrap_or(url.len());
    let without_query = &url[..end];
    let (scheme, rest) = match without_query.split_once("://") {
        Some((s, r)) => (s.to_ascii_lowercase(), r),
        None => return without_query.to_string(),
    };
    let path_start = rest.find('/').unwrap_or(rest.len());
    let (netloc, path) = rest.split_at(path_start);
    let last_segment = path.rfind('/').unwrap_or(0);
    let path = match path[last_segment..].find(';') {
        Some(i) => &path[..last_segment + i],
        None => path,
    };
    format!("{scheme}://{netloc}{path}")
}

/// Decoded query parameters, sorted by name then value, as `name=value&…`.
fn sorted_query(url: &str) -> String {
    let mut pairs = query_pairs(url);
    pairs.sort_unstable();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// The POST parameters of a V3 signature: form pairs, or the members of a JSON object.
enum PostParams {
    Form(Vec<(String, String)>),
    Json(serde_json::Map<String, Value>),
}

impl PostParams {
    fn is_empty(&self) -> bool {
        match self {
            PostParams::Form(p) => p.is_empty(),
            PostParams::Json(m) => m.is_empty(),
        }
    }
    fn sorted_string(&self) -> String {
        match self {
            PostParams::Form(pairs) => {
                let mut by_name: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
                for (k, v) in pairs {
                    by_name.entry(k).or_default().push(v);
                }
                let mut out = String::new();
                for (k, mut values) in by_name {
                    values.sort_unstable();
                    for v in values {
                        out.push_str(k);
                        out.push_str(v);
                    }
                }
                out
            }
            PostParams::Json(map) => json_params_string(map, 0),
        }
    }
}

fn post_params(body: &[u8]) -> Result<PostParams, VerifyError> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if matches!(first, Some(b'{') | Some(b'[')) {
        // A JSON body: only an object has parameters; anything else cannot be bound.
        return match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(map)) => Ok(PostParams::Json(map)),
            _ => Err(VerifyError::BodyHash),
        };
    }
    Ok(PostParams::Form(form_pairs(body)))
}

fn json_params_string(map: &serde_json::Map<String, Value>, depth: usize) -> String {
    let mut keys: Vec<&String> = map.keys().collect();
    keys.sort_unstable();
    let mut out = String::new();
    for k in keys {
        match &map[k.as_str()] {
            Value::Object(inner) if depth < MAX_DEPTH => {
                out.push_str(k);
                out.push_str(&json_params_string(inner, depth + 1));
            }
            Value::Array(items) => {
                let mut values: Vec<String> = items.iter().map(python_str).collect();
                values.sort_unstable();
                for v in values {
                    out.push_str(k);
                    out.push_str(&v);
                }
            }
            other => {
                out.push_str(k);
                out.push_str(&python_str(other));
            }
        }
    }
    out
}

/// Python's `str()` of a JSON scalar as `json.loads` produces it.
fn python_str(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Null => "None".into(),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => i.to_string(),
            (_, Some(u), _) => u.to_string(),
            (_, _, Some(f)) if f.is_finite() && f.fract() == 0.0 && f.abs() < 1e16 => {
                format!("{f:.1}")
            }
            (_, _, Some(f)) => f.to_string(),
            _ => n.to_string(),
        },
        other => other.to_string(),
    }
}

/// The V3 string to sign, before `.` + nonce.
pub fn v3_base(method: Method, url: &str, body: &[u8]) -> Result<String, VerifyError> {
    let mut out = base_url(url);
    let query = sorted_query(url);
    match method {
        Method::Get => {
            if !query.is_empty() {
                out.push('?');
                out.push_str(&query);
            }
        }
        Method::Post => {
            let params = post_params(body)?;
            let has_params = !params.is_empty();
            if !query.is_empty() || has_params {
                out.push('?');
                out.push_str(&query);
            }
            if !query.is_empty() && has_params {
                out.push('.');
            }
            out.push_str(&params.sorted_string());
        }
    }
    Ok(out)
}

/// base64(HMAC-SHA256(token, v3_base + "." + nonce)).
pub fn signature_v3(
    token: &str,
    method: Method,
    url: &str,
    body: &[u8],
    nonce: &str,
) -> Result<String, String> {
    let mut payload = v3_base(method, url, body)
        .map_err(|_| "a JSON body must be an object for Plivo V3 signing".to_string())?;
    payload.push('.');
    payload.push_str(nonce);
    Ok(B64.encode(hmac_sha256(token.as_bytes(), payload.as_bytes())))
}

/// base64(HMAC-SHA256(token, base_url + nonce)).
pub fn signature_v2(token: &str, url: &str, nonce: &str) -> String {
    let payload = format!("{}{nonce}", base_url(url));
    B64.encode(hmac_sha256(token.as_bytes(), payload.as_bytes()))
}

/// The headers a Plivo request for `req` carries, signed with the source's current token
/// (for `switchboard sign`, tests and the load harness): V3 and V2 with a nonce derived from
/// `req.now`.
pub fn sign(c: &PlivoSourceConfig, req: &SignRequest<'_>) -> Result<Vec<(String, String)>, String> {
    let token = c
        .auth_tokens
        .first()
        .ok_or("the source has no auth_tokens")?;
    let nonce =
        (req.now.unix_timestamp_nanos().unsigned_abs() % 100_000_000_000_000_000_000).to_string();
    let v3 = signature_v3(token.expose(), req.method, req.url, req.body, &nonce)?;
    let v2 = signature_v2(token.expose(), req.url, &nonce);
    Ok(vec![
        ("X-Plivo-Signature-V3".into(), v3),
        ("X-Plivo-Signature-V3-Nonce".into(), nonce.clone()),
        ("X-Plivo-Signature-V2".into(), v2),
        ("X-Plivo-Signature-V2-Nonce".into(), nonce),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::Headers;
    use time::OffsetDateTime;

    fn keys(tokens: &[&str], allow_v2: bool) -> Keys {
        Keys {
            auth_tokens: tokens.iter().map(|s| Secret::new(*s)).collect(),
            allow_v2,
        }
    }

    fn req(method: Method, url: &str, headers: &[(&str, &str)], body: &[u8]) -> Unverified {
        let mut h = Headers::new();
        for (n, v) in headers {
            h.insert(n, v);
        }
        Unverified::new(h, bytes::Bytes::copy_from_slice(body))
            .with_method(method)
            .with_url(url)
    }

    /// Published vector: plivo/plivo-python @ a0cd3237, tests/resources/test_signature.py
    /// (`validate_signature('https://answer.url', '12345', 'ehV3…', 'my_auth_token')` is
    /// True, and False for `my_auth_tokens`). See docs/protocols/plivo.md, "Signature V2".
    #[test]
    fn sdk_vector_v2() {
        const SIG: &str = "ehV3IKhLysWBxC1sy8INm0qGoQYdYsHwuoKjsX7FsXc=";
        assert_eq!(
            signature_v2("my_auth_token", "https://answer.url", "12345"),
            SIG
        );
        let headers = [(HEADER_V2, SIG), (HEADER_V2_NONCE, "12345")];
        let r = || req(Method::Post, "https://answer.url", &headers, b"From=1&To=2");
        assert!(verify(r(), &keys(&["my_auth_token"], true)).is_ok());
        assert_eq!(
            verify(r(), &keys(&["my_auth_tokens"], true)).unwrap_err(),
            VerifyError::Mismatch
        );
        // V2 signs neither the query nor the body.
        let r2 = req(
            Method::Post,
            "https://answer.url?x=1",
            &headers,
            b"anything",
        );
        assert!(verify(r2, &keys(&["my_auth_token"], true)).is_ok());
    }

    #[test]
    fn v2_only_when_enabled_and_never_over_v3() {
        let sig = signature_v2("tok", "https://h.example/p", "n1");
        let headers = [(HEADER_V2, sig.as_str()), (HEADER_V2_NONCE, "n1")];
        let r = || req(Method::Post, "https://h.example/p", &headers, b"From=1");
        assert_eq!(
            verify(r(), &keys(&["tok"], false)).unwrap_err(),
            VerifyError::AlgorithmDisabled
        );
        assert!(verify(r(), &keys(&["tok"], true)).is_ok());
        // A bad V3 signature is not rescued by a good V2 one.
        let bad_v3 = signature_v3(
            "other",
            Method::Post,
            "https://h.example/p",
            b"From=1",
            "n1",
        )
        .unwrap();
        let both = [
            (HEADER_V3, bad_v3.as_str()),
            (HEADER_V3_NONCE, "n1"),
            (HEADER_V2, sig.as_str()),
            (HEADER_V2_NONCE, "n1"),
        ];
        let r = req(Method::Post, "https://h.example/p", &both, b"From=1");
        assert_eq!(
            verify(r, &keys(&["tok"], true)).unwrap_err(),
            VerifyError::Mismatch
        );
        // V2 without its nonce.
        let r = req(
            Method::Post,
            "https://h.example/p",
            &headers[..1],
            b"From=1",
        );
        assert_eq!(
            verify(r, &keys(&["tok"], true)).unwrap_err(),
            VerifyError::Missing
        );
    }

    /// The canonical strings of docs/protocols/plivo.md ("Signature V3"), as plivo-python
    /// 4.63.0's `construct_post_url` / `construct_get_url` build them.
    #[test]
    fn v3_canonical_strings() {
        let form = b"To=2&From=1";
        assert_eq!(
            v3_base(Method::Post, "https://h/p?tenant=acme&a=1", form).unwrap(),
            "https://h/p?a=1&tenant=acme.From1To2"
        );
        assert_eq!(
            v3_base(Method::Post, "https://h/p", form).unwrap(),
            "https://h/p?From1To2"
        );
        assert_eq!(
            v3_base(Method::Get, "https://h/p?z=9&From=1", b"").unwrap(),
            "https://h/p?From=1&z=9"
        );
        // No POST parameters: no dangling '?' and no '.'.
        assert_eq!(
            v3_base(Method::Post, "https://h/p", b"").unwrap(),
            "https://h/p"
        );
        assert_eq!(
            v3_base(Method::Post, "https://h/p?b=2&a=1", b"").unwrap(),
            "https://h/p?a=1&b=2"
        );
        // Query values are decoded, repeated names sorted by value; ports kept as given;
        // fragments and ;params dropped.
        assert_eq!(
            v3_base(Method::Get, "HTTPS://h:8443/p;x?q=a%20b&q=%2B1#frag", b"").unwrap(),
            "https://h:8443/p?q=+1&q=a b"
        );
        // Form values decoded ('+' is a space), empty values kept, repeated names sorted.
        assert_eq!(
            v3_base(Method::Post, "https://h/p", b"Text=hi+there&Media=&B=2&B=1").unwrap(),
            "https://h/p?B1B2MediaTexthi there"
        );
        // JSON object bodies: members as parameters, Python str() of scalars, nested
        // objects recursed, arrays one entry per sorted element.
        assert_eq!(
            v3_base(
                Method::Post,
                "https://h/p",
                br#"{"b":true,"a":"x","n":null,"i":3,"f":1.5,"g":2.0,"o":{"z":1,"y":"w"},"l":["b","a"]}"#
            )
            .unwrap(),
            "https://h/p?axbTruef1.5g2.0i3lalbnNoneoywz1"
        );
        assert_eq!(
            v3_base(Method::Post, "https://h/p", b"[1,2]").unwrap_err(),
            VerifyError::BodyHash
        );
        assert_eq!(
            v3_base(Method::Post, "https://h/p", b"{nope").unwrap_err(),
            VerifyError::BodyHash
        );
    }

    /// HMACs of the canonical strings above, computed independently with Python's
    /// `base64.b64encode(hmac.new(b"my_auth_token", s.encode(), hashlib.sha256).digest())`.
    #[test]
    fn v3_signatures_match_an_independent_computation() {
        let cases = [
            (
                Method::Post,
                "https://h/p?tenant=acme&a=1",
                &b"To=2&From=1"[..],
                "FXd73mfqjfikIixbWfhSV39CwId408OXA+c11meAD2c=",
            ),
            (
                Method::Post,
                "https://h/p",
                &b"To=2&From=1"[..],
                "8+nnsnns+bUKfBheIc1BMjo3RZTt1+yHbLjDhH+JNuk=",
            ),
            (
                Method::Get,
                "https://h/p?z=9&From=1",
                &b""[..],
                "MRTmhB2+jY2IGs8EABSaXwuTyYNaL+xRNN/RafLE538=",
            ),
        ];
        for (method, url, body, expected) in cases {
            assert_eq!(
                signature_v3("my_auth_token", method, url, body, "12345").unwrap(),
                expected,
                "{url}"
            );
        }
    }

    fn v3_headers(sig: &str, nonce: &str) -> Vec<(String, String)> {
        vec![
            (HEADER_V3.into(), sig.into()),
            (HEADER_V3_NONCE.into(), nonce.into()),
        ]
    }

    fn with(headers: &[(String, String)], method: Method, url: &str, body: &[u8]) -> Unverified {
        let hs: Vec<(&str, &str)> = headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        req(method, url, &hs, body)
    }

    const URL: &str = "https://hooks.example.com/webhooks/pl?tenant=acme";
    const BODY: &[u8] =
        b"From=14155550100&To=15557654321&Text=Hello+there&Type=sms&MessageUUID=abc";

    #[test]
    fn v3_valid_tampered_wrong_secret() {
        let k = keys(&["tok"], false);
        let sig = signature_v3("tok", Method::Post, URL, BODY, "n-1").unwrap();
        let h = v3_headers(&sig, "n-1");
        assert!(verify(with(&h, Method::Post, URL, BODY), &k).is_ok());
        // Body tampered.
        let tampered = b"From=14155550100&To=15557654321&Text=Hello+thera&Type=sms&MessageUUID=abc";
        assert_eq!(
            verify(with(&h, Method::Post, URL, tampered), &k).unwrap_err(),
            VerifyError::Mismatch
        );
        // Nonce tampered.
        let h2 = v3_headers(&sig, "n-2");
        assert_eq!(
            verify(with(&h2, Method::Post, URL, BODY), &k).unwrap_err(),
            VerifyError::Mismatch
        );
        // Wrong secret.
        assert_eq!(
            verify(with(&h, Method::Post, URL, BODY), &keys(&["other"], false)).unwrap_err(),
            VerifyError::Mismatch
        );
        // Form parameter order does not matter (Plivo sorts).
        let reordered =
            b"To=15557654321&From=14155550100&MessageUUID=abc&Type=sms&Text=Hello+there";
        assert!(verify(with(&h, Method::Post, URL, reordered), &k).is_ok());
    }

    #[test]
    fn v3_url_rules() {
        let k = keys(&["tok"], false);
        let url = "https://hooks.example.com/webhooks/pl?b=2&a=1";
        let sig = signature_v3("tok", Method::Post, url, BODY, "n").unwrap();
        let h = v3_headers(&sig, "n");
        // Query order does not matter: Plivo V3 sorts it.
        assert!(verify(
            with(
                &h,
                Method::Post,
                "https://hooks.example.com/webhooks/pl?a=1&b=2",
                BODY
            ),
            &k
        )
        .is_ok());
        for other in [
            "http://hooks.example.com/webhooks/pl?b=2&a=1",
            "https://hooks.example.com/webhooks/pl/?b=2&a=1",
            "https://hooks.example.com:443/webhooks/pl?b=2&a=1",
            "https://hooks.example.com/webhooks/pl?b=2&a=3",
            "https://hooks.example.com/webhooks/pl?b=2",
        ] {
            assert_eq!(
                verify(with(&h, Method::Post, other, BODY), &k).unwrap_err(),
                VerifyError::Mismatch,
                "{other}"
            );
        }
        // Explicit port, signed as such.
        let port = "https://hooks.example.com:8443/webhooks/pl";
        let sig = signature_v3("tok", Method::Post, port, BODY, "n").unwrap();
        assert!(verify(with(&v3_headers(&sig, "n"), Method::Post, port, BODY), &k).is_ok());
    }

    #[test]
    fn v3_get_and_json() {
        let k = keys(&["tok"], false);
        let url = "https://hooks.example.com/webhooks/pl?MessageUUID=abc&From=1&Text=hi%20there";
        let sig = signature_v3("tok", Method::Get, url, b"", "n").unwrap();
        assert!(verify(with(&v3_headers(&sig, "n"), Method::Get, url, b""), &k).is_ok());
        let tampered = url.replace("hi%20there", "ho");
        assert_eq!(
            verify(
                with(&v3_headers(&sig, "n"), Method::Get, &tampered, b""),
                &k
            )
            .unwrap_err(),
            VerifyError::Mismatch
        );
        let json = br#"{"MessageUUID":"abc","Status":"delivered","Units":1}"#;
        let sig = signature_v3("tok", Method::Post, URL, json, "n").unwrap();
        assert!(verify(with(&v3_headers(&sig, "n"), Method::Post, URL, json), &k).is_ok());
        let tampered = br#"{"MessageUUID":"abc","Status":"failed","Units":1}"#;
        assert_eq!(
            verify(
                with(&v3_headers(&sig, "n"), Method::Post, URL, tampered),
                &k
            )
            .unwrap_err(),
            VerifyError::Mismatch
        );
    }

    #[test]
    fn v3_comma_list_rotation_and_main_account_header() {
        let k = keys(&["old", "new"], false);
        let old = signature_v3("old", Method::Post, URL, BODY, "n").unwrap();
        let new = signature_v3("new", Method::Post, URL, BODY, "n").unwrap();
        let foreign = signature_v3("foreign", Method::Post, URL, BODY, "n").unwrap();
        // One signature per token Plivo holds; we know only one of them.
        let list = format!("{foreign}, {new}");
        assert!(verify(with(&v3_headers(&list, "n"), Method::Post, URL, BODY), &k).is_ok());
        assert!(verify(with(&v3_headers(&old, "n"), Method::Post, URL, BODY), &k).is_ok());
        assert_eq!(
            verify(
                with(&v3_headers(&foreign, "n"), Method::Post, URL, BODY),
                &k
            )
            .unwrap_err(),
            VerifyError::Mismatch
        );
        // Main-account header alone.
        let h = vec![
            (HEADER_MA_V3.to_string(), new.clone()),
            (HEADER_V3_NONCE.to_string(), "n".to_string()),
        ];
        assert!(verify(with(&h, Method::Post, URL, BODY), &k).is_ok());
    }

    #[test]
    fn missing_and_malformed() {
        let k = keys(&["tok"], true);
        assert_eq!(
            verify(req(Method::Post, URL, &[], BODY), &k).unwrap_err(),
            VerifyError::Missing
        );
        let sig = signature_v3("tok", Method::Post, URL, BODY, "n").unwrap();
        assert_eq!(
            verify(req(Method::Post, URL, &[(HEADER_V3, &sig)], BODY), &k).unwrap_err(),
            VerifyError::Missing
        );
        let long = "A".repeat(5000);
        for bad in ["", ",,,", "not base64", "AAAA", long.as_str()] {
            assert_eq!(
                verify(with(&v3_headers(bad, "n"), Method::Post, URL, BODY), &k).unwrap_err(),
                VerifyError::Malformed,
                "{bad:.20}"
            );
        }
        // A JSON body that is not an object cannot be bound.
        let sig = signature_v3("tok", Method::Post, URL, b"", "n").unwrap();
        assert_eq!(
            verify(with(&v3_headers(&sig, "n"), Method::Post, URL, b"[1]"), &k).unwrap_err(),
            VerifyError::BodyHash
        );
    }

    #[test]
    fn sign_round_trips() {
        let cfg: PlivoSourceConfig = serde_json::from_value(serde_json::json!({
            "auth_tokens": ["tok"], "tenant": "acme"
        }))
        .unwrap();
        let k = Keys::from_config(&cfg);
        let now = OffsetDateTime::from_unix_timestamp(1_767_225_600).unwrap();
        for (method, url, body) in [
            (Method::Post, URL, BODY),
            (
                Method::Get,
                "https://hooks.example.com/webhooks/pl?MessageUUID=abc&Status=sent",
                &b""[..],
            ),
            (Method::Post, URL, &br#"{"MessageUUID":"abc"}"#[..]),
        ] {
            let headers = sign(
                &cfg,
                &SignRequest {
                    method,
                    url,
                    body,
                    now,
                },
            )
            .unwrap();
            assert!(
                verify(with(&headers, method, url, body), &k).is_ok(),
                "{url}"
            );
            // Without the V3 headers only V2 remains, disabled by default.
            let v2: Vec<_> = headers
                .iter()
                .filter(|(n, _)| n.contains("V2"))
                .cloned()
                .collect();
            assert_eq!(
                verify(with(&v2, method, url, body), &k).unwrap_err(),
                VerifyError::AlgorithmDisabled
            );
        }
        assert!(sign(
            &cfg,
            &SignRequest {
                method: Method::Post,
                url: URL,
                body: b"[]",
                now
            }
        )
        .is_err());
    }

    #[test]
    fn junk_never_panics() {
        let k = keys(&["tok"], true);
        let bodies: &[&[u8]] = &[
            b"",
            b"{",
            b"[",
            b"%zz",
            b"\xff",
            br#"{"a":{"b":{"c":[{"d":1}]}}}"#,
            b"{\"x\":1e400}",
        ];
        let deep = format!("{}1{}", "{\"a\":".repeat(200), "}".repeat(200));
        for body in bodies.iter().copied().chain([deep.as_bytes()]) {
            for url in [
                "",
                "://",
                "https://",
                "https://h;x",
                "h?a",
                "https://h/p;/q?%",
            ] {
                for hs in [
                    vec![
                        (HEADER_V3, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="),
                        (HEADER_V3_NONCE, ""),
                    ],
                    vec![
                        (HEADER_V2, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="),
                        (HEADER_V2_NONCE, "x"),
                    ],
                ] {
                    let _ = verify(req(Method::Post, url, &hs, body), &k);
                    let _ = verify(req(Method::Get, url, &hs, body), &k);
                }
            }
        }
    }
}
