//! Twilio Programmable Messaging (SMS, MMS, WhatsApp via Twilio): signature verification.
//!
//! `X-Twilio-Signature` is base64(HMAC-SHA1(key, string-to-sign)) where the string to sign is
//! the full URL Twilio requested (scheme, host, path and query exactly as configured,
//! percent-encoding untouched) followed, for form POSTs, by every parameter name and value
//! concatenated: names sorted, and for a name sent several times its values sorted with
//! duplicates removed (the behaviour of twilio-python's `RequestValidator`, pinned by its
//! `IK+Dwps556ElfBT0I3Rgjkr1wJU=` vector). Empty values are included.
//!
//! - **Port**: Twilio's own signing is inconsistent about the default port, so, like
//!   twilio-python, the URL is tried both without any port and with one (the given one, or
//!   443/80 added by scheme).
//! - **JSON bodies**: Twilio appends `bodySHA256=<hex sha256 of the raw body>` to the URL and
//!   signs the URL alone; the hash is checked against the body (`body_hash_mismatch`).
//!   A JSON request whose URL carries no `bodySHA256` is refused: nothing binds its body.
//! - **GET deliveries**: the parameters are in the query string, already part of the URL, so
//!   the URL alone is signed.
//! - **SharedKey** (Webhooks configuration API, Public Beta): with
//!   `X-Twilio-Webhooks-Signature-Settings: key=<id>,algorithm=HMAC_SHA256|HMAC_SHA1` the same
//!   string is signed with a SharedKey secret from `signing_keys` and that algorithm.
//! - No timestamp is signed: there is no replay window; duplicates are caught by dedup on
//!   `MessageSid` (+ `MessageStatus`).

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::{Digest, Sha256};

use super::{
    ct_eq, form_pairs, query_pairs, Method, SignRequest, Unverified, Verified, VerifyError,
};
use crate::config::twilio::TwilioSourceConfig;
use crate::crypto::Secret;

/// Content types (essence, lower case) this provider posts.
pub const MEDIA_TYPES: &[&str] = &["application/x-www-form-urlencoded", "application/json"];
/// Headers kept with a dead letter so that it can be re-verified on replay.
pub const SIGNATURE_HEADERS: &[&str] = &[HEADER_SIGNATURE, HEADER_SETTINGS, "content-type"];
/// Whether the provider may deliver webhooks with GET (parameters in the query string).
pub const ACCEPTS_GET: bool = true;

pub const HEADER_SIGNATURE: &str = "x-twilio-signature";
pub const HEADER_SETTINGS: &str = "x-twilio-webhooks-signature-settings";
/// The query parameter carrying the hex SHA-256 of a JSON body.
pub const BODY_HASH_PARAM: &str = "bodySHA256";

/// Longest signature header we look at (a SHA-256 signature is 44 base64 characters).
const MAX_SIGNATURE_LEN: usize = 128;

/// The HMAC of a Twilio signature: SHA-1 for Auth Tokens, either for SharedKeys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    HmacSha1,
    HmacSha256,
}

impl Algorithm {
    fn digest_len(self) -> usize {
        match self {
            Algorithm::HmacSha1 => 20,
            Algorithm::HmacSha256 => 32,
        }
    }
    /// The name in `X-Twilio-Webhooks-Signature-Settings`.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::HmacSha1 => "HMAC_SHA1",
            Algorithm::HmacSha256 => "HMAC_SHA256",
        }
    }
}

/// What a Twilio source verifies with, built once from its configuration.
#[derive(Debug, Clone)]
pub struct Keys {
    auth_tokens: Vec<Secret>,
    signing_keys: Vec<Secret>,
}

impl Keys {
    pub fn from_config(c: &TwilioSourceConfig) -> Keys {
        Keys {
            auth_tokens: c.auth_tokens.clone(),
            signing_keys: c.signing_keys.clone(),
        }
    }
}

pub fn verify(req: Unverified, keys: &Keys) -> Result<Verified, VerifyError> {
    let header = req
        .headers()
        .get(HEADER_SIGNATURE)
        .ok_or(VerifyError::Missing)?;
    let (secrets, algorithm) = match req.headers().get(HEADER_SETTINGS) {
        None => (&keys.auth_tokens, Algorithm::HmacSha1),
        Some(settings) => (&keys.signing_keys, parse_settings(settings)?),
    };
    let presented = decode_signature(header, algorithm)?;
    if secrets.is_empty() {
        // Signed with a kind of key this source has none of (e.g. a SharedKey request to a
        // source configured with Auth Tokens only).
        return Err(VerifyError::AlgorithmDisabled);
    }
    let params = signed_params(&req)?;
    let ok = url_variants(req.url()).iter().any(|url| {
        let payload = string_to_sign(url, &params);
        secrets
            .iter()
            .any(|s| mac_matches(algorithm, s.expose().as_bytes(), &payload, &presented))
    });
    if ok {
        Ok(req.into_verified())
    } else {
        Err(VerifyError::Mismatch)
    }
}

/// `key=<id>,algorithm=<name>` → the algorithm. Unknown algorithms are not enabled.
fn parse_settings(value: &str) -> Result<Algorithm, VerifyError> {
    if value.len() > 1024 {
        return Err(VerifyError::Malformed);
    }
    let mut algorithm = None;
    for part in value.split(',') {
        let Some((k, v)) = part.split_once('=') else {
            return Err(VerifyError::Malformed);
        };
        if k.trim().eq_ignore_ascii_case("algorithm") {
            algorithm = Some(v.trim());
        }
    }
    match algorithm {
        None | Some("") => Err(VerifyError::Malformed),
        Some(a) if a.eq_ignore_ascii_case("HMAC_SHA256") => Ok(Algorithm::HmacSha256),
        Some(a) if a.eq_ignore_ascii_case("HMAC_SHA1") => Ok(Algorithm::HmacSha1),
        Some(_) => Err(VerifyError::AlgorithmDisabled),
    }
}

fn decode_signature(header: &str, algorithm: Algorithm) -> Result<Vec<u8>, VerifyError> {
    let value = header.trim();
    if value.is_empty() || value.len() > MAX_SIGNATURE_LEN {
        return Err(VerifyError::Malformed);
    }
    let bytes = B64.decode(value).map_err(|_| VerifyError::Malformed)?;
    if bytes.len() != algorithm.digest_len() {
        return Err(VerifyError::Malformed);
    }
    Ok(bytes)
}

/// The parameters that follow the URL in the string to sign (empty for GET and JSON).
fn signed_params(req: &Unverified) -> Result<Vec<(String, String)>, VerifyError> {
    if req.method() == Method::Get {
        return Ok(Vec::new());
    }
    if let Some(expected_hex) = body_hash_param(req.url()) {
        let expected = hex::decode(expected_hex.trim()).map_err(|_| VerifyError::BodyHash)?;
        let actual = Sha256::digest(req.body());
        return if ct_eq(&expected, &actual) {
            Ok(Vec::new())
        } else {
            Err(VerifyError::BodyHash)
        };
    }
    if is_json_content_type(req.headers().get("content-type")) {
        // A JSON body is bound to the signature only through bodySHA256.
        return Err(VerifyError::BodyHash);
    }
    Ok(form_pairs(req.body()))
}

fn body_hash_param(url: &str) -> Option<String> {
    query_pairs(url)
        .into_iter()
        .find(|(k, _)| k == BODY_HASH_PARAM)
        .map(|(_, v)| v)
}

fn is_json_content_type(value: Option<&str>) -> bool {
    value.is_some_and(|v| {
        v.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .eq_ignore_ascii_case("application/json")
    })
}

/// URL + Σ name+value: names sorted; a repeated name's values sorted and de-duplicated.
pub fn string_to_sign(url: &str, params: &[(String, String)]) -> Vec<u8> {
    let mut sorted: Vec<(&str, &str)> = params
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    sorted.sort_unstable();
    sorted.dedup();
    let mut out = Vec::with_capacity(url.len() + params.len() * 16);
    out.extend_from_slice(url.as_bytes());
    for (k, v) in sorted {
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(v.as_bytes());
    }
    out
}

fn mac_matches(algorithm: Algorithm, key: &[u8], payload: &[u8], presented: &[u8]) -> bool {
    match algorithm {
        Algorithm::HmacSha1 => match Hmac::<Sha1>::new_from_slice(key) {
            Ok(mut mac) => {
                mac.update(payload);
                mac.verify_slice(presented).is_ok()
            }
            Err(_) => false,
        },
        Algorithm::HmacSha256 => match Hmac::<Sha256>::new_from_slice(key) {
            Ok(mut mac) => {
                mac.update(payload);
                mac.verify_slice(presented).is_ok()
            }
            Err(_) => false,
        },
    }
}

fn mac_base64(algorithm: Algorithm, key: &[u8], payload: &[u8]) -> String {
    let digest = match algorithm {
        Algorithm::HmacSha1 => Hmac::<Sha1>::new_from_slice(key).map(|mut m| {
            m.update(payload);
            m.finalize().into_bytes().to_vec()
        }),
        Algorithm::HmacSha256 => Hmac::<Sha256>::new_from_slice(key).map(|mut m| {
            m.update(payload);
            m.finalize().into_bytes().to_vec()
        }),
    };
    B64.encode(digest.unwrap_or_default())
}

/// The signature Twilio would send for `url` and `params` under `secret`.
pub fn compute_signature(
    algorithm: Algorithm,
    secret: &str,
    url: &str,
    params: &[(String, String)],
) -> String {
    mac_base64(algorithm, secret.as_bytes(), &string_to_sign(url, params))
}

/// Lowercase hex SHA-256 of a body: the value of `bodySHA256`.
pub fn body_sha256_hex(body: &[u8]) -> String {
    hex::encode(Sha256::digest(body))
}

/// The URL without any port, then with one (the given port, else 443 for https, 80
/// otherwise), as twilio-python's validator tries them. One entry when they coincide (never).
fn url_variants(url: &str) -> Vec<String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return vec![url.to_string()];
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (userinfo, hostport) = match authority.rfind('@') {
        Some(i) => authority.split_at(i + 1),
        None => ("", authority),
    };
    let (host, port) = split_port(hostport);
    let without = format!("{scheme}://{userinfo}{host}{tail}");
    let with = match port {
        Some(p) => format!("{scheme}://{userinfo}{host}:{p}{tail}"),
        None => {
            let default = if scheme.eq_ignore_ascii_case("https") {
                443
            } else {
                80
            };
            format!("{scheme}://{userinfo}{host}:{default}{tail}")
        }
    };
    vec![without, with]
}

/// `host[:port]` (IPv6 literals in brackets) → (host, port digits).
fn split_port(hostport: &str) -> (&str, Option<&str>) {
    let search_from = if hostport.starts_with('[') {
        hostport.find(']').unwrap_or(0)
    } else {
        0
    };
    match hostport[search_from..].rfind(':') {
        Some(i) => {
            let i = search_from + i;
            let port = &hostport[i + 1..];
            if port.bytes().all(|b| b.is_ascii_digit()) {
                (&hostport[..i], (!port.is_empty()).then_some(port))
            } else {
                (hostport, None)
            }
        }
        None => (hostport, None),
    }
}

/// The headers a Twilio request for `req` carries, signed with the source's current secret
/// (for `switchboard sign`, tests and the load harness): the first Auth Token (HMAC-SHA1), or,
/// for a source with SharedKeys only, the first SharedKey (HMAC-SHA256, with the settings
/// header). A JSON body must be sent to a URL carrying its `bodySHA256`.
pub fn sign(
    c: &TwilioSourceConfig,
    req: &SignRequest<'_>,
) -> Result<Vec<(String, String)>, String> {
    let params = match req.method {
        Method::Get => Vec::new(),
        Method::Post => match body_hash_param(req.url) {
            Some(h) => {
                let actual = body_sha256_hex(req.body);
                if !h.trim().eq_ignore_ascii_case(&actual) {
                    return Err(format!(
                        "the URL's bodySHA256 does not match the body; Twilio would call ...{BODY_HASH_PARAM}={actual}"
                    ));
                }
                Vec::new()
            }
            None if looks_like_json(req.body) => {
                return Err(format!(
                    "Twilio signs JSON bodies through the URL: add {BODY_HASH_PARAM}={} to the URL's query string",
                    body_sha256_hex(req.body)
                ))
            }
            None => form_pairs(req.body),
        },
    };
    if let Some(token) = c.auth_tokens.first() {
        let sig = compute_signature(Algorithm::HmacSha1, token.expose(), req.url, &params);
        return Ok(vec![("X-Twilio-Signature".into(), sig)]);
    }
    if let Some(key) = c.signing_keys.first() {
        let sig = compute_signature(Algorithm::HmacSha256, key.expose(), req.url, &params);
        return Ok(vec![
            ("X-Twilio-Signature".into(), sig),
            (
                "X-Twilio-Webhooks-Signature-Settings".into(),
                format!("key=switchboard,algorithm={}", Algorithm::HmacSha256.name()),
            ),
        ]);
    }
    Err("the source has neither auth_tokens nor signing_keys".into())
}

fn looks_like_json(body: &[u8]) -> bool {
    matches!(
        body.iter().find(|b| !b.is_ascii_whitespace()),
        Some(b'{') | Some(b'[')
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::Headers;
    use time::OffsetDateTime;

    // Published vectors: twilio/twilio-python @ 306691e7 (9.11.0),
    // tests/unit/test_request_validator.py (auth token "12345"); see
    // docs/protocols/twilio.md.
    const TOKEN: &str = "12345";
    const URL: &str = "https://mycompany.com/myapp.php?foo=1&bar=2";
    const EXPECTED: &str = "RSOYDt4T1cUTdK1PDd93/VVr8B8=";
    const BODY: &str = "{\"property\": \"value\", \"boolean\": true}";
    const BODY_HASH: &str = "0a1ff7634d9ab3b95db5c9a2dfe9416e41502b283a80c7cf19632632f96e6620";

    fn vector_params() -> Vec<(String, String)> {
        [
            ("CallSid", "CA1234567890ABCDE"),
            ("Digits", "1234"),
            ("From", "+14158675309"),
            ("To", "+18005551212"),
            ("Caller", "+14158675309"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    fn form(params: &[(String, String)]) -> Vec<u8> {
        url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(params)
            .finish()
            .into_bytes()
    }

    fn keys(tokens: &[&str], shared: &[&str]) -> Keys {
        Keys {
            auth_tokens: tokens.iter().map(|s| Secret::new(*s)).collect(),
            signing_keys: shared.iter().map(|s| Secret::new(*s)).collect(),
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

    fn post(url: &str, sig: &str, body: &[u8]) -> Unverified {
        req(
            Method::Post,
            url,
            &[
                (HEADER_SIGNATURE, sig),
                ("content-type", "application/x-www-form-urlencoded"),
            ],
            body,
        )
    }

    #[test]
    fn sdk_vector_compute_signature() {
        assert_eq!(
            compute_signature(Algorithm::HmacSha1, TOKEN, URL, &vector_params()),
            EXPECTED
        );
    }

    #[test]
    fn sdk_vector_validates_from_a_form_body() {
        let k = keys(&[TOKEN], &[]);
        let body = form(&vector_params());
        assert!(verify(post(URL, EXPECTED, &body), &k).is_ok());
    }

    /// twilio-python test_validation_removes_port_on_https / _adds_port_on_https /
    /// _removes_port_on_http / _adds_port_on_http.
    #[test]
    fn sdk_vectors_port_variants() {
        let k = keys(&[TOKEN], &[]);
        let body = form(&vector_params());
        // https with an explicit port validates against the signature of the URL without it.
        let with_1234 = URL.replace(".com", ".com:1234");
        assert!(verify(post(&with_1234, EXPECTED, &body), &k).is_ok());
        // Signature over the URL with :443 validates for the URL without a port.
        assert!(verify(post(URL, "kvajT1Ptam85bY51eRf/AJRuM3w=", &body), &k).is_ok());
        // http with :1234: signed as is.
        let http_1234 = with_1234.replace("https", "http");
        assert!(verify(post(&http_1234, "Zmvh+3yNM1Phv2jhDCwEM3q5ebU=", &body), &k).is_ok());
        // http without a port: the :80 signature validates.
        let http = URL.replace("https", "http");
        assert!(verify(post(&http, "0ZXoZLH/DfblKGATFgpif+LLRf4=", &body), &k).is_ok());
        // ...but an https signature does not validate on http.
        assert_eq!(
            verify(post(&http, EXPECTED, &body), &k).unwrap_err(),
            VerifyError::Mismatch
        );
    }

    /// twilio-python test_validation_of_body_succeeds / test_compute_hash_unicode.
    #[test]
    fn sdk_vector_json_body_hash() {
        assert_eq!(body_sha256_hex(BODY.as_bytes()), BODY_HASH);
        let k = keys(&[TOKEN], &[]);
        let url = format!("{URL}&bodySHA256={BODY_HASH}");
        let json = [
            (HEADER_SIGNATURE, "a9nBmqA0ju/hNViExpshrM61xv4="),
            ("content-type", "application/json"),
        ];
        assert!(verify(req(Method::Post, &url, &json, BODY.as_bytes()), &k).is_ok());
        // The same signature with a different body: the hash no longer matches.
        let tampered = BODY.replace("value", "other");
        assert_eq!(
            verify(req(Method::Post, &url, &json, tampered.as_bytes()), &k).unwrap_err(),
            VerifyError::BodyHash
        );
        // A JSON body without bodySHA256 is not bound by anything.
        assert_eq!(
            verify(req(Method::Post, URL, &json, BODY.as_bytes()), &k).unwrap_err(),
            VerifyError::BodyHash
        );
        // A malformed hash.
        let bad = format!("{URL}&bodySHA256=zz");
        assert_eq!(
            verify(req(Method::Post, &bad, &json, BODY.as_bytes()), &k).unwrap_err(),
            VerifyError::BodyHash
        );
    }

    /// twilio-python test_compute_signature_duplicate_multi_dict / _query_dict: repeated
    /// names, values sorted and de-duplicated.
    #[test]
    fn sdk_vector_repeated_values() {
        let body = b"Sid=CA123&SidAccount=AC123&Digits=5678&Digits=1234&Digits=1234";
        let k = keys(&[TOKEN], &[]);
        assert!(verify(post(URL, "IK+Dwps556ElfBT0I3Rgjkr1wJU=", body), &k).is_ok());
        assert_eq!(
            compute_signature(Algorithm::HmacSha1, TOKEN, URL, &form_pairs(body)),
            "IK+Dwps556ElfBT0I3Rgjkr1wJU="
        );
    }

    fn inbound() -> Vec<(String, String)> {
        [
            ("MessageSid", "SM0123456789abcdef0123456789abcdef"),
            ("AccountSid", "AC0123456789abcdef0123456789abcdef"),
            ("From", "+14155550100"),
            ("To", "+15557654321"),
            ("Body", "Hello + world & more"),
            ("NumMedia", "0"),
            ("ToCity", ""),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    fn signed(token: &str, url: &str, params: &[(String, String)]) -> (String, Vec<u8>) {
        (
            compute_signature(Algorithm::HmacSha1, token, url, params),
            form(params),
        )
    }

    #[test]
    fn valid_tampered_and_wrong_secret() {
        let url = "https://hooks.example.com/webhooks/tw";
        let k = keys(&["tok-a"], &[]);
        let (sig, body) = signed("tok-a", url, &inbound());
        assert!(verify(post(url, &sig, &body), &k).is_ok());
        // Tampered body: one parameter changed.
        let mut p = inbound();
        p[4].1 = "Hello + world & less".into();
        assert_eq!(
            verify(post(url, &sig, &form(&p)), &k).unwrap_err(),
            VerifyError::Mismatch
        );
        // A parameter added (even an empty one) changes the signature.
        let mut p = inbound();
        p.push(("Extra".into(), String::new()));
        assert_eq!(
            verify(post(url, &sig, &form(&p)), &k).unwrap_err(),
            VerifyError::Mismatch
        );
        // Wrong secret.
        let (other, _) = signed("tok-b", url, &inbound());
        assert_eq!(
            verify(post(url, &other, &body), &k).unwrap_err(),
            VerifyError::Mismatch
        );
    }

    #[test]
    fn form_parameter_order_does_not_matter_but_empty_values_count() {
        let url = "https://hooks.example.com/webhooks/tw";
        let k = keys(&["tok"], &[]);
        let (sig, _) = signed("tok", url, &inbound());
        let mut reversed = inbound();
        reversed.reverse();
        assert!(verify(post(url, &sig, &form(&reversed)), &k).is_ok());
        let without_empty: Vec<_> = inbound()
            .into_iter()
            .filter(|(_, v)| !v.is_empty())
            .collect();
        assert_eq!(
            verify(post(url, &sig, &form(&without_empty)), &k).unwrap_err(),
            VerifyError::Mismatch
        );
    }

    #[test]
    fn rotated_token_is_accepted() {
        let url = "https://hooks.example.com/webhooks/tw";
        let k = keys(&["primary", "secondary"], &[]);
        for t in ["primary", "secondary"] {
            let (sig, body) = signed(t, url, &inbound());
            assert!(verify(post(url, &sig, &body), &k).is_ok(), "{t}");
        }
    }

    #[test]
    fn url_must_match_exactly_scheme_path_slash_and_query() {
        let url = "https://hooks.example.com/webhooks/tw?tenant=acme&x=1";
        let k = keys(&["tok"], &[]);
        let (sig, body) = signed("tok", url, &inbound());
        assert!(verify(post(url, &sig, &body), &k).is_ok());
        for other in [
            "http://hooks.example.com/webhooks/tw?tenant=acme&x=1",
            "https://hooks.example.com/webhooks/tw/?tenant=acme&x=1",
            "https://hooks.example.com/webhooks/tw?x=1&tenant=acme",
            "https://hooks.example.com/webhooks/tw?tenant=acme",
            "https://hooks.example.com/webhooks/tw2?tenant=acme&x=1",
            "https://evil.example.com/webhooks/tw?tenant=acme&x=1",
        ] {
            assert_eq!(
                verify(post(other, &sig, &body), &k).unwrap_err(),
                VerifyError::Mismatch,
                "{other}"
            );
        }
        // An explicit default port on either side is tolerated.
        assert!(verify(
            post(
                "https://hooks.example.com:443/webhooks/tw?tenant=acme&x=1",
                &sig,
                &body
            ),
            &k
        )
        .is_ok());
        let (sig443, _) = signed(
            "tok",
            "https://hooks.example.com:443/webhooks/tw?tenant=acme&x=1",
            &inbound(),
        );
        assert!(verify(post(url, &sig443, &body), &k).is_ok());
    }

    #[test]
    fn get_delivery_signs_the_url_alone() {
        let url =
            "https://hooks.example.com/webhooks/tw?MessageSid=SM1&From=%2B14155550100&Body=hi";
        let k = keys(&["tok"], &[]);
        let sig = compute_signature(Algorithm::HmacSha1, "tok", url, &[]);
        let r = req(Method::Get, url, &[(HEADER_SIGNATURE, &sig)], b"");
        assert!(verify(r, &k).is_ok());
        let tampered = url.replace("Body=hi", "Body=ho");
        let r = req(Method::Get, &tampered, &[(HEADER_SIGNATURE, &sig)], b"");
        assert_eq!(verify(r, &k).unwrap_err(), VerifyError::Mismatch);
    }

    #[test]
    fn missing_and_malformed_headers() {
        let url = "https://hooks.example.com/webhooks/tw";
        let k = keys(&["tok"], &[]);
        let body = form(&inbound());
        let r = req(Method::Post, url, &[], &body);
        assert_eq!(verify(r, &k).unwrap_err(), VerifyError::Missing);
        let long = "A".repeat(10_000);
        for bad in ["", "   ", "not base64!!", "AAAA", &long] {
            assert_eq!(
                verify(post(url, bad, &body), &k).unwrap_err(),
                VerifyError::Malformed,
                "{bad:.20}"
            );
        }
    }

    #[test]
    fn shared_key_mode() {
        let url = "https://hooks.example.com/webhooks/tw";
        let params = inbound();
        let body = form(&params);
        let sig256 = compute_signature(Algorithm::HmacSha256, "shared-1", url, &params);
        let settings = "key=KS0123,algorithm=HMAC_SHA256";
        let r = |sig: &str, settings: &str| {
            req(
                Method::Post,
                url,
                &[(HEADER_SIGNATURE, sig), (HEADER_SETTINGS, settings)],
                &body,
            )
        };
        let k = keys(&["tok"], &["old", "shared-1"]);
        assert!(verify(r(&sig256, settings), &k).is_ok());
        // SHA-1 SharedKey.
        let sig1 = compute_signature(Algorithm::HmacSha1, "old", url, &params);
        assert!(verify(r(&sig1, "key=KS1,algorithm=HMAC_SHA1"), &k).is_ok());
        // Signed with the Auth Token but announcing a SharedKey: not accepted.
        let by_token = compute_signature(Algorithm::HmacSha256, "tok", url, &params);
        assert_eq!(
            verify(r(&by_token, settings), &k).unwrap_err(),
            VerifyError::Mismatch
        );
        // No SharedKeys configured.
        assert_eq!(
            verify(r(&sig256, settings), &keys(&["tok"], &[])).unwrap_err(),
            VerifyError::AlgorithmDisabled
        );
        // Unknown algorithm, malformed settings, wrong length for the algorithm.
        assert_eq!(
            verify(r(&sig256, "key=KS1,algorithm=HMAC_MD5"), &k).unwrap_err(),
            VerifyError::AlgorithmDisabled
        );
        for bad in ["", "garbage", "key=KS1", "key=KS1,algorithm="] {
            assert_eq!(
                verify(r(&sig256, bad), &k).unwrap_err(),
                VerifyError::Malformed,
                "{bad}"
            );
        }
        assert_eq!(
            verify(r(&sig1, settings), &k).unwrap_err(),
            VerifyError::Malformed
        );
    }

    #[test]
    fn shared_key_only_source_refuses_token_signatures() {
        let url = "https://hooks.example.com/webhooks/tw";
        let (sig, body) = signed("tok", url, &inbound());
        assert_eq!(
            verify(post(url, &sig, &body), &keys(&[], &["shared"])).unwrap_err(),
            VerifyError::AlgorithmDisabled
        );
    }

    #[test]
    fn url_variants_cover_ports_and_ipv6() {
        assert_eq!(
            url_variants("https://a.example/p?q=1"),
            ["https://a.example/p?q=1", "https://a.example:443/p?q=1"]
        );
        assert_eq!(
            url_variants("http://a.example:8080"),
            ["http://a.example", "http://a.example:8080"]
        );
        assert_eq!(
            url_variants("https://[::1]:8443/x"),
            ["https://[::1]/x", "https://[::1]:8443/x"]
        );
        assert_eq!(url_variants("not a url"), ["not a url"]);
    }

    #[test]
    fn sign_round_trips() {
        let now = OffsetDateTime::from_unix_timestamp(1_767_225_600).unwrap();
        let cfg: TwilioSourceConfig = serde_json::from_value(serde_json::json!({
            "auth_tokens": ["tok"], "channels": {"15557654321": "acme"}
        }))
        .unwrap();
        let k = Keys::from_config(&cfg);
        let url = "https://hooks.example.com/webhooks/tw";
        let body = form(&inbound());
        let headers = sign(
            &cfg,
            &SignRequest {
                method: Method::Post,
                url,
                body: &body,
                now,
            },
        )
        .unwrap();
        let hs: Vec<(&str, &str)> = headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        assert!(verify(req(Method::Post, url, &hs, &body), &k).is_ok());
        // JSON needs bodySHA256 in the URL.
        let json = br#"{"MessageSid":"SM1"}"#;
        let sr = SignRequest {
            method: Method::Post,
            url,
            body: json,
            now,
        };
        assert!(sign(&cfg, &sr).unwrap_err().contains("bodySHA256="));
        let url_j = format!("{url}?bodySHA256={}", body_sha256_hex(json));
        let headers = sign(&cfg, &SignRequest { url: &url_j, ..sr }).unwrap();
        let mut hs: Vec<(&str, &str)> = headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        hs.push(("content-type", "application/json"));
        assert!(verify(req(Method::Post, &url_j, &hs, json), &k).is_ok());
        // SharedKey-only source.
        let cfg2: TwilioSourceConfig = serde_json::from_value(serde_json::json!({
            "signing_keys": ["sk"], "tenant": "acme"
        }))
        .unwrap();
        let headers = sign(
            &cfg2,
            &SignRequest {
                method: Method::Get,
                url,
                body: b"",
                now,
            },
        )
        .unwrap();
        let hs: Vec<(&str, &str)> = headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        assert!(verify(req(Method::Get, url, &hs, b""), &Keys::from_config(&cfg2)).is_ok());
    }

    #[test]
    fn junk_never_panics() {
        let k = keys(&["tok"], &["sk"]);
        let junk: &[&[u8]] = &[b"", b"%", b"=&=&", b"\xff\xfe", b"a=%zz&b"];
        for body in junk {
            for url in [
                "",
                "://",
                "https://",
                "https://[::1",
                "https://h:99999999999/p?bodySHA256",
            ] {
                for h in [
                    vec![(HEADER_SIGNATURE, "AAAAAAAAAAAAAAAAAAAAAAAAAAA=")],
                    vec![
                        (
                            HEADER_SIGNATURE,
                            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
                        ),
                        (HEADER_SETTINGS, "algorithm=HMAC_SHA256,,=,"),
                    ],
                ] {
                    let _ = verify(req(Method::Post, url, &h, body), &k);
                    let _ = verify(req(Method::Get, url, &h, body), &k);
                }
            }
        }
    }
}
