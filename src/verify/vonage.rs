//! Vonage signatures: Messages API (signed JWT) and SMS API (legacy `sig` parameter).
//!
//! **Messages API** (and Dispatch/Voice): a POST with `Authorization: Bearer <JWT>`, HS256
//! under the account's signature secret. Claims: `iat` (unix seconds, no `exp`), `jti`,
//! `iss = "Vonage"`, `payload_hash` (lowercase hex SHA-256 of the body as sent), `api_key`,
//! optionally `application_id`. Vonage's SDKs check only the JWT signature; this verifier
//! also requires `payload_hash` to match the raw body, `iat` to be within the source's replay
//! window, `exp` (if ever present) not to be past, and, when configured, `api_key` to match.
//! Only HS256 is accepted: `none`, HS384/512 and asymmetric algorithms are refused before
//! any key is tried. A Bearer token on a GET is not accepted (its parameters would be
//! unsigned): GETs always take the SMS API path.
//!
//! **SMS API** (inbound SMS and delivery receipts): parameters by GET query, POST form or POST
//! JSON. When signing is enabled for the account they include `sig`, `timestamp` and `nonce`.
//! The signed string is every parameter but `sig`, sorted by name, each as `&name=value`
//! with `&` and `=` inside values replaced by `_`; `sig` is the lowercase hex of
//! `md5(string + secret)` ("MD5 hash", the dashboard default) or of HMAC-MD5/SHA1/SHA256/
//! SHA512(secret, string), per `sms_signature_method`. It is compared case-insensitively
//! (some SDKs produce uppercase hex). `timestamp` must then be within the replay window.
//! A request without `sig` is refused (`Missing`) unless the source sets the insecure
//! `allow_unsigned_sms`, and then only when it has the shape of an SMS API webhook.
//!
//! Every configured secret is tried (rotation); every comparison of secret-derived bytes is
//! constant time. Nothing here logs or returns a secret or an expected signature.

use std::time::Duration;

use base64::Engine;
use hmac::{Hmac, Mac};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Validation};
use md5::{Digest, Md5};
use serde_json::Value;
use sha1::Sha1;
use sha2::{Sha256, Sha512};
use time::OffsetDateTime;

use super::{ct_eq, form_pairs, query_pairs, within_window, Method};
use super::{SignRequest, Unverified, Verified, VerifyError};
use crate::config::vonage::{SmsSignatureMethod, VonageSourceConfig};
use crate::crypto::Secret;

/// Content types (essence, lower case) this provider posts.
pub const MEDIA_TYPES: &[&str] = &["application/json", "application/x-www-form-urlencoded"];
/// Headers kept with a dead letter so that it can be re-verified on replay (the SMS API `sig`
/// travels in the parameters, which are kept with the body/URL).
pub const SIGNATURE_HEADERS: &[&str] = &["authorization"];
/// Whether the provider may deliver webhooks with GET (parameters in the query string):
/// the SMS API's default HTTP method is GET.
pub const ACCEPTS_GET: bool = true;

/// Longest `Authorization` value considered (Vonage's tokens are a few hundred bytes).
const MAX_TOKEN_LEN: usize = 8 * 1024;

/// What a Vonage source verifies with, built once from its configuration.
#[derive(Debug, Clone)]
pub struct Keys {
    secrets: Vec<Secret>,
    api_key: Option<String>,
    sms_method: SmsSignatureMethod,
    allow_unsigned_sms: bool,
    replay_window: Duration,
}

impl Keys {
    pub fn from_config(c: &VonageSourceConfig) -> Keys {
        Keys {
            secrets: c.signature_secrets.clone(),
            api_key: c.api_key.clone(),
            sms_method: c.sms_signature_method,
            allow_unsigned_sms: c.allow_unsigned_sms,
            replay_window: Duration::from_secs(c.replay_window_secs),
        }
    }
}

pub fn verify(req: Unverified, keys: &Keys) -> Result<Verified, VerifyError> {
    if req.method() == Method::Post {
        if let Some(auth) = req.headers().get("authorization") {
            let auth = auth.trim();
            if let Some(token) = bearer_token(auth) {
                let token = token.to_string();
                return verify_jwt(req, &token, keys);
            }
        }
    }
    verify_sms(req, keys)
}

/// The token of `Bearer <token>` (scheme case-insensitive), or `None` for another scheme.
fn bearer_token(auth: &str) -> Option<&str> {
    let (scheme, token) = auth.split_once(' ').unwrap_or((auth, ""));
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

// ---------------------------------------------------------------------------------------
// Messages API: JWT

fn verify_jwt(req: Unverified, token: &str, keys: &Keys) -> Result<Verified, VerifyError> {
    let claims = decode_jwt(token, &keys.secrets)?;
    check_claims(&claims, req.body(), req.now(), keys)?;
    Ok(req.into_verified())
}

/// The claims of an HS256 token whose signature matches one of `secrets`.
fn decode_jwt(token: &str, secrets: &[Secret]) -> Result<Value, VerifyError> {
    if token.is_empty() || token.len() > MAX_TOKEN_LEN {
        return Err(VerifyError::Malformed);
    }
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(VerifyError::Malformed);
    };
    // Read `alg` ourselves first: an `alg` the library does not know (`none`) would
    // otherwise be reported as a malformed header rather than a refused algorithm.
    let header = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header.trim_end_matches('='))
        .map_err(|_| VerifyError::Malformed)?;
    let header: Value = serde_json::from_slice(&header).map_err(|_| VerifyError::Malformed)?;
    match header.get("alg").and_then(Value::as_str) {
        Some("HS256") => {}
        Some(_) => return Err(VerifyError::AlgorithmDisabled),
        None => return Err(VerifyError::Malformed),
    }
    let mut validation = Validation::new(Algorithm::HS256);
    // Time claims are checked against the request's clock in `check_claims`.
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    for secret in secrets {
        let key = DecodingKey::from_secret(secret.expose().as_bytes());
        match jsonwebtoken::decode::<Value>(token, &key, &validation) {
            Ok(data) => return Ok(data.claims),
            Err(e) => match e.kind() {
                jsonwebtoken::errors::ErrorKind::InvalidSignature => continue,
                jsonwebtoken::errors::ErrorKind::InvalidAlgorithm => {
                    return Err(VerifyError::AlgorithmDisabled)
                }
                _ => return Err(VerifyError::Malformed),
            },
        }
    }
    Err(VerifyError::Mismatch)
}

/// A numeric claim as whole seconds (`iat` may be written as a float by some encoders).
fn seconds_claim(claims: &Value, name: &str) -> Result<Option<i64>, VerifyError> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => Ok(Some(i)),
            (None, Some(f)) if f.is_finite() && f.abs() < 1e15 => Ok(Some(f as i64)),
            _ => Err(VerifyError::Claims),
        },
        Some(_) => Err(VerifyError::Claims),
    }
}

fn check_claims(
    claims: &Value,
    body: &[u8],
    now: OffsetDateTime,
    keys: &Keys,
) -> Result<(), VerifyError> {
    if !claims.is_object() {
        return Err(VerifyError::Claims);
    }
    if let Some(expected) = &keys.api_key {
        match claims.get("api_key").and_then(Value::as_str) {
            Some(k) if k == expected => {}
            _ => return Err(VerifyError::Claims),
        }
    }
    let iat = seconds_claim(claims, "iat")?.ok_or(VerifyError::Claims)?;
    if !within_window(iat, now, keys.replay_window) {
        return Err(VerifyError::Expired);
    }
    if let Some(exp) = seconds_claim(claims, "exp")? {
        if now.unix_timestamp() > exp {
            return Err(VerifyError::Expired);
        }
    }
    let presented = claims
        .get("payload_hash")
        .and_then(Value::as_str)
        .ok_or(VerifyError::Claims)?;
    let presented = hex::decode(presented).map_err(|_| VerifyError::BodyHash)?;
    let actual = Sha256::digest(body);
    if ct_eq(&presented, &actual) {
        Ok(())
    } else {
        Err(VerifyError::BodyHash)
    }
}

// ---------------------------------------------------------------------------------------
// SMS API: `sig` parameter

/// The parameters of a request as the SMS API sends them: the URL's query for GET; for POST
/// the JSON object of a JSON body (first non-blank byte `{`), else the form body. JSON values
/// become strings: strings as they are, numbers and booleans as written, `null` as empty,
/// arrays and objects as compact JSON. Shared with the normalizer, so that both read the same
/// parameters.
pub fn request_params(
    method: Method,
    url: &str,
    body: &[u8],
) -> Result<Vec<(String, String)>, String> {
    match method {
        Method::Get => Ok(query_pairs(url)),
        Method::Post => {
            let first = body.iter().find(|b| !b.is_ascii_whitespace());
            if first == Some(&b'{') {
                let v: Value = serde_json::from_slice(body)
                    .map_err(|e| format!("the body is not JSON: {e}"))?;
                let Value::Object(map) = v else {
                    return Err("the JSON body is not an object".into());
                };
                Ok(map
                    .into_iter()
                    .map(|(k, v)| {
                        let v = match v {
                            Value::String(s) => s,
                            Value::Null => String::new(),
                            other => other.to_string(),
                        };
                        (k, v)
                    })
                    .collect())
            } else {
                Ok(form_pairs(body))
            }
        }
    }
}

/// Whether parameters look like an SMS API inbound message or delivery receipt (and not a
/// Messages API payload, which is always signed with a JWT).
fn looks_like_sms_api(params: &[(String, String)]) -> bool {
    let has = |k: &str| params.iter().any(|(n, v)| n == k && !v.is_empty());
    (has("msisdn") || has("messageId")) && !params.iter().any(|(n, _)| n == "message_uuid")
}

fn verify_sms(req: Unverified, keys: &Keys) -> Result<Verified, VerifyError> {
    let params =
        request_params(req.method(), req.url(), req.body()).map_err(|_| VerifyError::Malformed)?;
    let mut sigs = params.iter().filter(|(k, _)| k == "sig");
    let sig = match (sigs.next(), sigs.next()) {
        (None, _) => {
            return if keys.allow_unsigned_sms && looks_like_sms_api(&params) {
                Ok(req.into_verified())
            } else {
                Err(VerifyError::Missing)
            };
        }
        (Some((_, sig)), None) => sig,
        (Some(_), Some(_)) => return Err(VerifyError::Malformed),
    };
    // A repeated parameter cannot be put in the signed string unambiguously.
    let mut names: Vec<&str> = params.iter().map(|(k, _)| k.as_str()).collect();
    names.sort_unstable();
    if names.windows(2).any(|w| w[0] == w[1]) {
        return Err(VerifyError::Malformed);
    }
    let presented = hex::decode(sig).map_err(|_| VerifyError::Malformed)?;
    if presented.len() != keys.sms_method.digest_len() {
        // A well-formed digest of another method's length: the dashboard's method is not
        // the configured one.
        return Err(if matches!(presented.len(), 16 | 20 | 32 | 64) {
            VerifyError::AlgorithmDisabled
        } else {
            VerifyError::Malformed
        });
    }
    let base = sms_base_string(&params);
    let ok = keys
        .secrets
        .iter()
        .any(|s| ct_eq(&sms_digest(keys.sms_method, s.expose(), &base), &presented));
    if !ok {
        return Err(VerifyError::Mismatch);
    }
    let timestamp = params
        .iter()
        .find(|(k, _)| k == "timestamp")
        .and_then(|(_, v)| v.trim().parse::<i64>().ok())
        .ok_or(VerifyError::Claims)?;
    if !within_window(timestamp, req.now(), keys.replay_window) {
        return Err(VerifyError::Expired);
    }
    Ok(req.into_verified())
}

/// `&k1=v1&k2=v2...` over every parameter but `sig`, sorted by name, with `&` and `=` in
/// values replaced by `_`.
fn sms_base_string(params: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = params.iter().filter(|(k, _)| k != "sig").collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut base = String::new();
    for (k, v) in sorted {
        base.push('&');
        base.push_str(k);
        base.push('=');
        base.extend(
            v.chars()
                .map(|c| if c == '&' || c == '=' { '_' } else { c }),
        );
    }
    base
}

fn sms_digest(method: SmsSignatureMethod, secret: &str, base: &str) -> Vec<u8> {
    fn hmac<M: Mac + hmac::digest::KeyInit>(secret: &str, base: &str) -> Vec<u8> {
        let mut mac = <M as hmac::digest::KeyInit>::new_from_slice(secret.as_bytes())
            .expect("HMAC accepts keys of any length");
        mac.update(base.as_bytes());
        mac.finalize().into_bytes().to_vec()
    }
    match method {
        SmsSignatureMethod::Md5hash => {
            let mut h = Md5::new();
            h.update(base.as_bytes());
            h.update(secret.as_bytes());
            h.finalize().to_vec()
        }
        SmsSignatureMethod::Md5 => hmac::<Hmac<Md5>>(secret, base),
        SmsSignatureMethod::Sha1 => hmac::<Hmac<Sha1>>(secret, base),
        SmsSignatureMethod::Sha256 => hmac::<Hmac<Sha256>>(secret, base),
        SmsSignatureMethod::Sha512 => hmac::<Hmac<Sha512>>(secret, base),
    }
}

/// The lowercase hex `sig` the SMS API would send for `params` (any `sig` among them is
/// ignored). `params` must already contain `timestamp` (and `nonce`) if they are to be signed.
pub fn sign_sms_params(
    method: SmsSignatureMethod,
    secret: &str,
    params: &[(String, String)],
) -> String {
    hex::encode(sms_digest(method, secret, &sms_base_string(params)))
}

/// `params` plus `timestamp` (at `now`), `nonce` and `sig`, as a signed SMS API webhook
/// carries them, signed with the source's current secret and configured method.
pub fn signed_sms_params(
    c: &VonageSourceConfig,
    params: &[(&str, &str)],
    now: OffsetDateTime,
) -> Result<Vec<(String, String)>, String> {
    let secret = current_secret(c)?;
    let mut out: Vec<(String, String)> = params
        .iter()
        .filter(|(k, _)| !matches!(*k, "sig" | "timestamp" | "nonce"))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let ts = now.unix_timestamp().to_string();
    let nonce = nonce_for(&out, &ts);
    out.push(("nonce".into(), nonce));
    out.push(("timestamp".into(), ts));
    let sig = sign_sms_params(c.sms_signature_method, secret, &out);
    out.push(("sig".into(), sig));
    Ok(out)
}

/// `url` (a GET delivery, parameters in its query) with `timestamp`, `nonce` and `sig`
/// appended, for tests and the load harness.
pub fn signed_sms_url(
    c: &VonageSourceConfig,
    url: &str,
    now: OffsetDateTime,
) -> Result<String, String> {
    let pairs = query_pairs(url);
    let borrowed: Vec<(&str, &str)> = pairs
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let signed = signed_sms_params(c, &borrowed, now)?;
    let base = url.split(['?', '#']).next().unwrap_or(url);
    let query = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(signed.iter())
        .finish();
    Ok(format!("{base}?{query}"))
}

/// A form body (`application/x-www-form-urlencoded`) with `timestamp`, `nonce` and `sig`
/// added, for tests and the load harness.
pub fn signed_sms_form(
    c: &VonageSourceConfig,
    body: &[u8],
    now: OffsetDateTime,
) -> Result<Vec<u8>, String> {
    let pairs = form_pairs(body);
    let borrowed: Vec<(&str, &str)> = pairs
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let signed = signed_sms_params(c, &borrowed, now)?;
    Ok(url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(signed.iter())
        .finish()
        .into_bytes())
}

/// A JSON object body with `timestamp`, `nonce` and `sig` added (string values), for tests
/// and the load harness.
pub fn signed_sms_json(
    c: &VonageSourceConfig,
    body: &[u8],
    now: OffsetDateTime,
) -> Result<Vec<u8>, String> {
    let pairs = request_params(Method::Post, "", body)?;
    let borrowed: Vec<(&str, &str)> = pairs
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let signed = signed_sms_params(c, &borrowed, now)?;
    let mut obj: serde_json::Map<String, Value> = match serde_json::from_slice(body) {
        Ok(Value::Object(m)) => m,
        _ => return Err("the body is not a JSON object".into()),
    };
    for (k, v) in signed.into_iter().rev().take(3) {
        obj.insert(k, Value::String(v));
    }
    serde_json::to_vec(&Value::Object(obj)).map_err(|e| e.to_string())
}

fn nonce_for(params: &[(String, String)], ts: &str) -> String {
    let mut h = Sha256::new();
    for (k, v) in params {
        h.update(k.as_bytes());
        h.update([0]);
        h.update(v.as_bytes());
        h.update([0]);
    }
    h.update(ts.as_bytes());
    let d = hex::encode(&h.finalize()[..16]);
    format!(
        "{}-{}-{}-{}-{}",
        &d[..8],
        &d[8..12],
        &d[12..16],
        &d[16..20],
        &d[20..32]
    )
}

fn current_secret(c: &VonageSourceConfig) -> Result<&str, String> {
    c.signature_secrets
        .first()
        .map(Secret::expose)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| "the source has no signature secret".to_string())
}

// ---------------------------------------------------------------------------------------
// Signing (switchboard sign, tests, load harness)

/// A Messages API `Authorization: Bearer <JWT>` value for `body` at `now` under `secret`,
/// with the claims Vonage sends (`iat`, `jti`, `iss`, `payload_hash`, `api_key` if given).
pub fn sign_jwt(secret: &str, api_key: Option<&str>, body: &[u8], now: OffsetDateTime) -> String {
    let payload_hash = hex::encode(Sha256::digest(body));
    let jti = {
        let d =
            hex::encode(&Sha256::digest(format!("{payload_hash}{}", now.unix_timestamp()))[..16]);
        format!(
            "{}-{}-{}-{}-{}",
            &d[..8],
            &d[8..12],
            &d[12..16],
            &d[16..20],
            &d[20..32]
        )
    };
    let mut claims = serde_json::json!({
        "iat": now.unix_timestamp(),
        "jti": jti,
        "iss": "Vonage",
        "payload_hash": payload_hash,
    });
    if let (Some(obj), Some(k)) = (claims.as_object_mut(), api_key) {
        obj.insert("api_key".into(), Value::String(k.to_string()));
    }
    let header = jsonwebtoken::Header::new(Algorithm::HS256);
    // Encoding a JSON object with an HMAC key cannot fail.
    let token = jsonwebtoken::encode(
        &header,
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap_or_default();
    format!("Bearer {token}")
}

/// The headers a Vonage request for `req` carries, signed with the source's current secret
/// (for `switchboard sign`, tests and the load harness).
///
/// A POST gets the Messages API's `Authorization: Bearer <JWT>` (valid for any body). A GET
/// can only be an SMS API delivery, whose signature is a parameter of the URL, not a header:
/// that is an error explaining to use [`signed_sms_url`] (or [`signed_sms_form`] /
/// [`signed_sms_json`] for SMS API POSTs).
pub fn sign(
    c: &VonageSourceConfig,
    req: &SignRequest<'_>,
) -> Result<Vec<(String, String)>, String> {
    let secret = current_secret(c)?;
    match req.method {
        Method::Post => Ok(vec![(
            "Authorization".to_string(),
            sign_jwt(secret, c.api_key.as_deref(), req.body, req.now),
        )]),
        Method::Get => Err(
            "Vonage signs GET deliveries (SMS API) with sig/timestamp/nonce query parameters, not headers: \
             build the URL with verify::vonage::signed_sms_url"
                .into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::Headers;
    use std::collections::BTreeMap;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2026-01-01 00:00:00 UTC);

    fn cfg(secrets: &[&str], method: SmsSignatureMethod) -> VonageSourceConfig {
        VonageSourceConfig {
            signature_secrets: secrets.iter().map(|s| Secret::new(*s)).collect(),
            api_key: None,
            sms_signature_method: method,
            allow_unsigned_sms: false,
            tenant: Some("acme".into()),
            channels: BTreeMap::new(),
            include_raw: None,
            public_base_url: None,
            replay_window_secs: 300,
        }
    }

    fn keys(secrets: &[&str], method: SmsSignatureMethod) -> Keys {
        Keys::from_config(&cfg(secrets, method))
    }

    fn post(auth: Option<&str>, body: &[u8], now: OffsetDateTime) -> Unverified {
        let mut h = Headers::new();
        if let Some(a) = auth {
            h.insert("Authorization", a);
        }
        Unverified::new(h, bytes::Bytes::copy_from_slice(body)).with_now(now)
    }

    fn get(url: &str, now: OffsetDateTime) -> Unverified {
        Unverified::new(Headers::new(), bytes::Bytes::new())
            .with_method(Method::Get)
            .with_url(url)
            .with_now(now)
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// A JWT with arbitrary header and claims, HMAC-signed with `secret` by hand.
    fn raw_jwt(header: &Value, claims: &Value, secret: &str) -> String {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let msg = format!(
            "{}.{}",
            b64.encode(header.to_string()),
            b64.encode(claims.to_string())
        );
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(msg.as_bytes());
        format!("{msg}.{}", b64.encode(mac.finalize().into_bytes()))
    }

    const BODY: &[u8] = br#"{"channel":"sms","message_uuid":"aaaaaaaa-bbbb-cccc-dddd-0123456789ab","to":"447700900000","from":"447700900001","timestamp":"2025-02-03T12:14:25Z","text":"Hello From Vonage!","message_type":"text"}"#;

    // ---- published vectors ---------------------------------------------------------------

    /// Vonage/vonage-python-sdk @ 445cab802b0f9d61d8e036b146bf67102d5051f6,
    /// `jwt/tests/test_verify_jwt.py`: this HS256 token verifies with secret
    /// `qwertyuiopasdfghjklzxcvbnm123456`, not with `asdf`; `asdf` is not a token.
    /// Its claims (iss "Online JWT Builder", iat 1697634680, exp 33254540828) carry no
    /// `payload_hash`, which the SDK does not check but we require: with the clock pinned to
    /// its `iat` the full check stops at the missing claim; at today's clock, at the window.
    const SDK_TOKEN: &str = "eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJPbmxpbmUgSldUIEJ1aWxkZXIiLCJpYXQiOjE2OTc2MzQ2ODAsImV4cCI6MzMyNTQ1NDA4MjgsImF1ZCI6IiIsInN1YiI6IiJ9.88vJc3I2HhuqEDixHXVhc9R30tA6U_HQHZTC29y6CGM";
    const SDK_SECRET: &str = "qwertyuiopasdfghjklzxcvbnm123456";

    #[test]
    fn published_jwt_vector() {
        let claims = decode_jwt(SDK_TOKEN, &[Secret::new(SDK_SECRET)]).unwrap();
        assert_eq!(claims["iat"], 1697634680);
        assert_eq!(
            decode_jwt(SDK_TOKEN, &[Secret::new("asdf")]).unwrap_err(),
            VerifyError::Mismatch
        );
        // Rotation: the right secret second in the list.
        assert!(decode_jwt(SDK_TOKEN, &[Secret::new("asdf"), Secret::new(SDK_SECRET)]).is_ok());
        assert_eq!(
            decode_jwt("asdf", &[Secret::new(SDK_SECRET)]).unwrap_err(),
            VerifyError::Malformed
        );
        let k = keys(&[SDK_SECRET], SmsSignatureMethod::Md5hash);
        let bearer = format!("Bearer {SDK_TOKEN}");
        let pinned = OffsetDateTime::from_unix_timestamp(1697634680).unwrap();
        assert_eq!(
            verify(post(Some(&bearer), b"{}", pinned), &k).unwrap_err(),
            VerifyError::Claims
        );
        assert_eq!(
            verify(post(Some(&bearer), b"{}", NOW), &k).unwrap_err(),
            VerifyError::Expired
        );
    }

    /// Vonage/vonage-python-sdk @ 19168f9b4b1ba56366a649c8d145c713103bcebb,
    /// `http_client/tests/test_auth.py` (secret `signature_secret`).
    #[test]
    fn published_python_sms_vectors() {
        let p = pairs(&[
            ("param1", "value1"),
            ("param2", "value2"),
            ("timestamp", "1234567890"),
        ]);
        // test_sign_params (sha256)
        assert_eq!(
            sign_sms_params(SmsSignatureMethod::Sha256, "signature_secret", &p),
            "280c4320703dbc98bfa22db676655ed2acfbfe8792b062ff7622e67f1183c287"
        );
        // test_sign_params_default_sig_method (the v4 SDK's default is HMAC-MD5)
        assert_eq!(
            sign_sms_params(SmsSignatureMethod::Md5, "signature_secret", &p),
            "724c2bf6ca423c36e20631b11d1c5753"
        );
        // test_sign_params_with_special_characters: `&` and `=` in values become `_`
        let special = pairs(&[
            ("param1", "value&1"),
            ("param2", "value=2"),
            ("timestamp", "1234567890"),
        ]);
        assert_eq!(
            sign_sms_params(SmsSignatureMethod::Md5, "signature_secret", &special),
            "2bbf0abafb2c55e5af6231513896a2ac"
        );
        // test_sign_params_with_dynamic_timestamp (time() mocked to 12345)
        let dynamic = pairs(&[
            ("param1", "value1"),
            ("param2", "value2"),
            ("timestamp", "12345"),
        ]);
        assert_eq!(
            sign_sms_params(SmsSignatureMethod::Md5, "signature_secret", &dynamic),
            "bc7e95bb4e341090b3a202a2885903a5"
        );
        // test_check_signature_valid_signature, through the full verifier (GET), with the
        // clock pinned to the vector's timestamp; the same request today is out of window.
        let k = keys(&["signature_secret"], SmsSignatureMethod::Md5);
        let url = "https://hooks.example.com/webhooks/v?param=value&timestamp=1234567890&sig=655a4d0b7f064dff438defc52b012cf5";
        let pinned = OffsetDateTime::from_unix_timestamp(1234567890).unwrap();
        assert!(verify(get(url, pinned), &k).is_ok());
        assert_eq!(verify(get(url, NOW), &k).unwrap_err(), VerifyError::Expired);
        // test_check_signature_invalid_signature
        let bad = "https://hooks.example.com/webhooks/v?param=value&timestamp=1234567890&sig=invalid_signature";
        assert_eq!(
            verify(get(bad, pinned), &k).unwrap_err(),
            VerifyError::Malformed
        );
    }

    /// Vonage/vonage-php-sdk-core @ 002c7200488e0ceb99ce52da8cf82e84b3c2efa9,
    /// `test/Client/SignatureTest.php`: real inbound SMS parameter sets, secret
    /// `my_secret_key_for_testing`, for every method (HMAC ones in uppercase hex), including
    /// `md5hash` (the dashboard default, which the Python v4 SDK cannot compute), `nonce`,
    /// and a text with `&` and `=`.
    #[test]
    fn published_php_sms_vectors() {
        let inbound = [
            ("message-timestamp", "2013-11-21 15:27:30"),
            ("messageId", "020000001B0FE827"),
            ("msisdn", "14843472194"),
            ("text", "Test again"),
            ("timestamp", "1385047698"),
            ("to", "13239877404"),
            ("type", "text"),
        ];
        let secret = "my_secret_key_for_testing";
        for (method, sig) in [
            (SmsSignatureMethod::Md5hash, "d2e7b1dc968737c5998ad624e02f90b7"),
            (SmsSignatureMethod::Md5, "DDEBD46008C2D4E93CCE578A332A52D5"),
            (SmsSignatureMethod::Sha1, "27D0D05C2876C7CB1720DBCDBA4D492E1E55C09A"),
            (
                SmsSignatureMethod::Sha256,
                "DDB8397C2B90AAC7F3882D306475C9A5058C92322EEF43C92B298B6E0FC0D330",
            ),
            (
                SmsSignatureMethod::Sha512,
                "E0D3C650F8C9D1A5C174D10DDDBFB003E561F59B265616208B0487C5D819481CD3C311D59CF6165ECD1139622D5BA3A256C0D763AC4A9AD9144B5A426B94FE82",
            ),
        ] {
            assert_eq!(
                sign_sms_params(method, secret, &pairs(&inbound)),
                sig.to_ascii_lowercase(),
                "{method:?}"
            );
            // Uppercase hex verifies too (case-insensitive), as a POST form.
            let mut with_sig = pairs(&inbound);
            with_sig.push(("sig".into(), sig.into()));
            let body = url::form_urlencoded::Serializer::new(String::new())
                .extend_pairs(with_sig.iter())
                .finish();
            let pinned = OffsetDateTime::from_unix_timestamp(1385047698).unwrap();
            assert!(
                verify(post(None, body.as_bytes(), pinned), &keys(&[secret], method)).is_ok(),
                "{method:?}"
            );
        }
        let md5hash = [
            (
                "83c052a82906ec7c116e16f6d92f7eee",
                vec![
                    ("message-timestamp", "2013-11-21 17:37:31"),
                    ("messageId", "030000002A267DBB"),
                    ("msisdn", "14843472194"),
                    ("text", "One more time"),
                    ("timestamp", "1385055451"),
                    ("to", "14849970568"),
                    ("type", "text"),
                ],
            ),
            (
                "ff933bf31c79ab3fc6a38d100191c48f",
                vec![
                    ("keyword", "TESTINGS"),
                    ("message-timestamp", "2017-04-04 23:05:22"),
                    ("messageId", "0C00000027217D5B"),
                    ("msisdn", "14843472194"),
                    ("nonce", "c4ab6ed2-9bf5-48a0-af91-107e29bdd399"),
                    ("text", "Testings"),
                    ("timestamp", "1491347122"),
                    ("to", "12192259404"),
                    ("type", "text"),
                ],
            ),
            (
                "e06d9763e3fd0b9c31beb5fc2fcb011c",
                vec![
                    ("keyword", "TEST"),
                    ("message-timestamp", "2017-04-04 22:57:47"),
                    ("messageId", "0B00000042AC53BD"),
                    ("msisdn", "14843472194"),
                    ("nonce", "929d6744-bd28-42c8-b6cf-31d5b4f43732"),
                    ("text", "Test with & and ="),
                    ("timestamp", "1491346667"),
                    ("to", "12192259404"),
                    ("type", "text"),
                ],
            ),
        ];
        let k = keys(&[secret], SmsSignatureMethod::Md5hash);
        for (sig, params) in md5hash {
            let mut p = pairs(&params);
            assert_eq!(
                sign_sms_params(SmsSignatureMethod::Md5hash, secret, &p),
                sig
            );
            // Through the full verifier as a GET, the `sig` given among the parameters.
            p.push(("sig".into(), sig.into()));
            let query = url::form_urlencoded::Serializer::new(String::new())
                .extend_pairs(p.iter())
                .finish();
            let ts: i64 = params
                .iter()
                .find(|(k, _)| *k == "timestamp")
                .unwrap()
                .1
                .parse()
                .unwrap();
            let pinned = OffsetDateTime::from_unix_timestamp(ts).unwrap();
            let url = format!("https://hooks.example.com/webhooks/vonage?{query}");
            assert!(verify(get(&url, pinned), &k).is_ok(), "{sig}");
        }
    }

    // ---- Messages API JWT -------------------------------------------------------------------

    #[test]
    fn jwt_valid_rotated_and_wrong_secret() {
        let k = keys(&["old-secret", "new-secret"], SmsSignatureMethod::Md5hash);
        for s in ["old-secret", "new-secret"] {
            let auth = sign_jwt(s, Some("a1b2c3d"), BODY, NOW);
            assert!(verify(post(Some(&auth), BODY, NOW), &k).is_ok(), "{s}");
        }
        let auth = sign_jwt("other", None, BODY, NOW);
        assert_eq!(
            verify(post(Some(&auth), BODY, NOW), &k).unwrap_err(),
            VerifyError::Mismatch
        );
        // Scheme is case-insensitive.
        let auth = sign_jwt("new-secret", None, BODY, NOW).replacen("Bearer", "bearer", 1);
        assert!(verify(post(Some(&auth), BODY, NOW), &k).is_ok());
    }

    #[test]
    fn jwt_tampered_body_is_a_body_hash_mismatch() {
        let k = keys(&["s"], SmsSignatureMethod::Md5hash);
        let auth = sign_jwt("s", None, BODY, NOW);
        let tampered = String::from_utf8_lossy(BODY).replace("Hello", "Hellp");
        assert_eq!(
            verify(post(Some(&auth), tampered.as_bytes(), NOW), &k).unwrap_err(),
            VerifyError::BodyHash
        );
        // Re-serialized JSON (same data, other bytes) does not verify either.
        let reserialized =
            serde_json::to_vec_pretty(&serde_json::from_slice::<Value>(BODY).unwrap()).unwrap();
        assert_eq!(
            verify(post(Some(&auth), &reserialized, NOW), &k).unwrap_err(),
            VerifyError::BodyHash
        );
    }

    #[test]
    fn jwt_replay_window() {
        let k = keys(&["s"], SmsSignatureMethod::Md5hash);
        let auth = sign_jwt("s", None, BODY, NOW);
        for (offset, ok) in [
            (0, true),
            (300, true),
            (-300, true),
            (301, false),
            (-301, false),
            (86_400, false),
        ] {
            let now = NOW + time::Duration::seconds(offset);
            let r = verify(post(Some(&auth), BODY, now), &k);
            if ok {
                assert!(r.is_ok(), "{offset}");
            } else {
                assert_eq!(r.unwrap_err(), VerifyError::Expired, "{offset}");
            }
        }
        // A past `exp` (Vonage sends none, but if one is there it is honoured).
        let claims = serde_json::json!({"iat": NOW.unix_timestamp(), "exp": NOW.unix_timestamp() - 1,
            "payload_hash": hex::encode(Sha256::digest(BODY))});
        let t = raw_jwt(
            &serde_json::json!({"alg":"HS256","typ":"JWT"}),
            &claims,
            "s",
        );
        assert_eq!(
            verify(post(Some(&format!("Bearer {t}")), BODY, NOW), &k).unwrap_err(),
            VerifyError::Expired
        );
    }

    #[test]
    fn jwt_claims_required() {
        let k = keys(&["s"], SmsSignatureMethod::Md5hash);
        let hash = hex::encode(Sha256::digest(BODY));
        let header = serde_json::json!({"alg":"HS256","typ":"JWT"});
        let iat = NOW.unix_timestamp();
        for (claims, want) in [
            (serde_json::json!({"iat": iat}), VerifyError::Claims),
            (
                serde_json::json!({"payload_hash": hash}),
                VerifyError::Claims,
            ),
            (
                serde_json::json!({"iat": "now", "payload_hash": hash}),
                VerifyError::Claims,
            ),
            (
                serde_json::json!({"iat": iat, "payload_hash": 5}),
                VerifyError::Claims,
            ),
            (
                serde_json::json!({"iat": iat, "payload_hash": "zz"}),
                VerifyError::BodyHash,
            ),
            (
                serde_json::json!({"iat": iat, "payload_hash": "00".repeat(32)}),
                VerifyError::BodyHash,
            ),
        ] {
            let t = raw_jwt(&header, &claims, "s");
            let r = verify(post(Some(&format!("Bearer {t}")), BODY, NOW), &k);
            assert_eq!(r.unwrap_err(), want, "{claims}");
        }
        // A float `iat` and an uppercase hex hash are accepted.
        let claims =
            serde_json::json!({"iat": iat as f64 + 0.5, "payload_hash": hash.to_uppercase()});
        let t = raw_jwt(&header, &claims, "s");
        assert!(verify(post(Some(&format!("Bearer {t}")), BODY, NOW), &k).is_ok());
        // A payload that is not a JSON object.
        let t = raw_jwt(&header, &serde_json::json!([1, 2]), "s");
        let r = verify(post(Some(&format!("Bearer {t}")), BODY, NOW), &k);
        assert!(
            matches!(r, Err(VerifyError::Claims) | Err(VerifyError::Malformed)),
            "{r:?}"
        );
    }

    #[test]
    fn jwt_api_key_must_match_when_configured() {
        let mut c = cfg(&["s"], SmsSignatureMethod::Md5hash);
        c.api_key = Some("a1b2c3d".into());
        let k = Keys::from_config(&c);
        assert!(verify(
            post(Some(&sign_jwt("s", Some("a1b2c3d"), BODY, NOW)), BODY, NOW),
            &k
        )
        .is_ok());
        assert_eq!(
            verify(
                post(Some(&sign_jwt("s", Some("zzzz"), BODY, NOW)), BODY, NOW),
                &k
            )
            .unwrap_err(),
            VerifyError::Claims
        );
        assert_eq!(
            verify(post(Some(&sign_jwt("s", None, BODY, NOW)), BODY, NOW), &k).unwrap_err(),
            VerifyError::Claims
        );
        // sign() uses the configured api_key.
        let h = sign(
            &c,
            &SignRequest {
                method: Method::Post,
                url: "https://x/webhooks/v",
                body: BODY,
                now: NOW,
            },
        )
        .unwrap();
        assert_eq!(h[0].0, "Authorization");
        assert!(verify(post(Some(&h[0].1), BODY, NOW), &k).is_ok());
    }

    #[test]
    fn jwt_other_algorithms_are_refused() {
        let k = keys(&["s"], SmsSignatureMethod::Md5hash);
        let claims = serde_json::json!({"iat": NOW.unix_timestamp(), "payload_hash": hex::encode(Sha256::digest(BODY))});
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        // alg none with an empty signature.
        let none = format!(
            "{}.{}.",
            b64.encode(r#"{"alg":"none","typ":"JWT"}"#),
            b64.encode(claims.to_string())
        );
        // HS512 / RS256 headers (signature irrelevant: refused before any key is tried).
        for alg in ["HS512", "RS256", "HS384", "hs256"] {
            let t = raw_jwt(&serde_json::json!({"alg": alg, "typ": "JWT"}), &claims, "s");
            assert_eq!(
                verify(post(Some(&format!("Bearer {t}")), BODY, NOW), &k).unwrap_err(),
                VerifyError::AlgorithmDisabled,
                "{alg}"
            );
        }
        assert_eq!(
            verify(post(Some(&format!("Bearer {none}")), BODY, NOW), &k).unwrap_err(),
            VerifyError::AlgorithmDisabled
        );
    }

    #[test]
    fn jwt_malformed_and_missing() {
        let k = keys(&["s"], SmsSignatureMethod::Md5hash);
        let huge = format!("Bearer {}", "a".repeat(100_000));
        for bad in [
            "Bearer ",
            "Bearer a.b",
            "Bearer a.b.c.d",
            "Bearer !!!.???.###",
            "Bearer e30.e30.e30", // header {} without alg
            huge.as_str(),
            "Bearer eyJhbGciOiJIUzI1NiJ9.bm90IGpzb24.AAAA",
        ] {
            let r = verify(post(Some(bad), BODY, NOW), &k);
            assert!(
                matches!(r, Err(VerifyError::Malformed) | Err(VerifyError::Mismatch)),
                "{bad:.40}: {r:?}"
            );
        }
        assert_eq!(
            verify(post(Some("Bearer e30.e30.e30"), BODY, NOW), &k).unwrap_err(),
            VerifyError::Malformed
        );
        // No Authorization and no sig: missing.
        assert_eq!(
            verify(post(None, BODY, NOW), &k).unwrap_err(),
            VerifyError::Missing
        );
        // Another scheme is not a JWT: falls to the SMS path, which finds no sig.
        assert_eq!(
            verify(post(Some("Basic dXNlcjpwYXNz"), BODY, NOW), &k).unwrap_err(),
            VerifyError::Missing
        );
    }

    #[test]
    fn jwt_on_get_is_not_accepted() {
        // The JWT covers only the (empty) body of a GET, not its query: never enough.
        let k = keys(&["s"], SmsSignatureMethod::Md5hash);
        let mut h = Headers::new();
        h.insert("Authorization", &sign_jwt("s", None, b"", NOW));
        let r = Unverified::new(h, bytes::Bytes::new())
            .with_method(Method::Get)
            .with_url(
                "https://x/webhooks/v?msisdn=447700900001&to=447700900000&messageId=1&text=hi",
            )
            .with_now(NOW);
        assert_eq!(verify(r, &k).unwrap_err(), VerifyError::Missing);
    }

    // ---- SMS API sig ----------------------------------------------------------------------

    const INBOUND: &[(&str, &str)] = &[
        ("msisdn", "447700900001"),
        ("to", "447700900000"),
        ("messageId", "0A0000000123ABCD1"),
        ("text", "Hello world & friends = all"),
        ("type", "text"),
        ("keyword", "HELLO"),
        ("api-key", "abcd1234"),
        ("message-timestamp", "2025-12-31 23:59:00"),
    ];

    #[test]
    fn sms_get_form_and_json_round_trip_every_method() {
        for method in [
            SmsSignatureMethod::Md5hash,
            SmsSignatureMethod::Md5,
            SmsSignatureMethod::Sha1,
            SmsSignatureMethod::Sha256,
            SmsSignatureMethod::Sha512,
        ] {
            let c = cfg(&["s3cr3t"], method);
            let k = Keys::from_config(&c);
            let base = url::form_urlencoded::Serializer::new(String::new())
                .extend_pairs(INBOUND.iter())
                .finish();
            let url = signed_sms_url(
                &c,
                &format!("https://hooks.example.com/webhooks/v?{base}"),
                NOW,
            )
            .unwrap();
            assert!(verify(get(&url, NOW), &k).is_ok(), "{method:?} GET");
            let form = signed_sms_form(&c, base.as_bytes(), NOW).unwrap();
            assert!(
                verify(post(None, &form, NOW), &k).is_ok(),
                "{method:?} form"
            );
            let json =
                serde_json::to_vec(&INBOUND.iter().cloned().collect::<BTreeMap<_, _>>()).unwrap();
            let json = signed_sms_json(&c, &json, NOW).unwrap();
            assert!(
                verify(post(None, &json, NOW), &k).is_ok(),
                "{method:?} JSON"
            );
        }
    }

    #[test]
    fn sms_tampered_wrong_secret_rotation() {
        let c = cfg(&["s3cr3t"], SmsSignatureMethod::Sha256);
        let signed = signed_sms_params(&c, INBOUND, NOW).unwrap();
        let to_form = |p: &[(String, String)]| {
            url::form_urlencoded::Serializer::new(String::new())
                .extend_pairs(p.iter())
                .finish()
        };
        // Tampered value.
        let mut t = signed.clone();
        t[3].1 = "Hello world & enemies".into();
        let k = Keys::from_config(&c);
        assert_eq!(
            verify(post(None, to_form(&t).as_bytes(), NOW), &k).unwrap_err(),
            VerifyError::Mismatch
        );
        // Added parameter.
        let mut t = signed.clone();
        t.push(("extra".into(), "1".into()));
        assert_eq!(
            verify(post(None, to_form(&t).as_bytes(), NOW), &k).unwrap_err(),
            VerifyError::Mismatch
        );
        // Parameter order does not matter (sorted), case of sig does not either.
        let mut t = signed.clone();
        t.reverse();
        for (k2, v) in t.iter_mut() {
            if k2 == "sig" {
                *v = v.to_uppercase();
            }
        }
        assert!(verify(post(None, to_form(&t).as_bytes(), NOW), &k).is_ok());
        // Wrong secret; rotation.
        let wrong = Keys::from_config(&cfg(&["other"], SmsSignatureMethod::Sha256));
        assert_eq!(
            verify(post(None, to_form(&signed).as_bytes(), NOW), &wrong).unwrap_err(),
            VerifyError::Mismatch
        );
        let rotated = Keys::from_config(&cfg(&["other", "s3cr3t"], SmsSignatureMethod::Sha256));
        assert!(verify(post(None, to_form(&signed).as_bytes(), NOW), &rotated).is_ok());
        // POST body signed, but the verifier reads GET from the URL only: a GET with the
        // params in the URL verifies; the same params in the body of a GET are ignored.
        let r = Unverified::new(Headers::new(), bytes::Bytes::from(to_form(&signed)))
            .with_method(Method::Get)
            .with_url("https://x/webhooks/v")
            .with_now(NOW);
        assert_eq!(verify(r, &k).unwrap_err(), VerifyError::Missing);
    }

    #[test]
    fn sms_timestamp_window() {
        let c = cfg(&["s"], SmsSignatureMethod::Md5hash);
        let k = Keys::from_config(&c);
        let url = signed_sms_url(
            &c,
            "https://x/webhooks/v?msisdn=1&to=2&messageId=3&text=hi",
            NOW,
        )
        .unwrap();
        for (offset, ok) in [
            (0, true),
            (300, true),
            (-300, true),
            (301, false),
            (-301, false),
        ] {
            let r = verify(get(&url, NOW + time::Duration::seconds(offset)), &k);
            assert_eq!(r.is_ok(), ok, "{offset}: {r:?}");
            if !ok {
                assert_eq!(r.unwrap_err(), VerifyError::Expired);
            }
        }
        // Signed without a timestamp: the signature matches, the claim is missing.
        let p = pairs(&[("msisdn", "1"), ("to", "2"), ("messageId", "3")]);
        let sig = sign_sms_params(SmsSignatureMethod::Md5hash, "s", &p);
        let url = format!("https://x/webhooks/v?msisdn=1&to=2&messageId=3&sig={sig}");
        assert_eq!(verify(get(&url, NOW), &k).unwrap_err(), VerifyError::Claims);
    }

    #[test]
    fn sms_malformed_missing_and_method_mismatch() {
        let c = cfg(&["s"], SmsSignatureMethod::Md5hash);
        let k = Keys::from_config(&c);
        for q in [
            "msisdn=1&timestamp=1&sig=zz",
            "msisdn=1&timestamp=1&sig=",
            "msisdn=1&timestamp=1&sig=abc",
            "msisdn=1&timestamp=1&sig=00&sig=00",
            "msisdn=1&msisdn=2&timestamp=1&sig=00112233445566778899aabbccddeeff",
        ] {
            assert_eq!(
                verify(get(&format!("https://x/w?{q}"), NOW), &k).unwrap_err(),
                VerifyError::Malformed,
                "{q}"
            );
        }
        // A SHA-256-length sig on an md5hash source: the dashboard method differs.
        let sha = "ab".repeat(32);
        assert_eq!(
            verify(
                get(&format!("https://x/w?msisdn=1&timestamp=1&sig={sha}"), NOW),
                &k
            )
            .unwrap_err(),
            VerifyError::AlgorithmDisabled
        );
        // JSON body that is not an object / not JSON.
        assert_eq!(
            verify(post(None, b"{not json", NOW), &k).unwrap_err(),
            VerifyError::Malformed
        );
        assert_eq!(
            verify(post(None, b"", NOW), &k).unwrap_err(),
            VerifyError::Missing
        );
        assert_eq!(
            verify(post(None, b"[1]", NOW), &k).unwrap_err(),
            VerifyError::Missing
        );
        assert_eq!(
            verify(
                get("https://x/w?msisdn=1&to=2&messageId=3&text=hi", NOW),
                &k
            )
            .unwrap_err(),
            VerifyError::Missing
        );
    }

    #[test]
    fn unsigned_sms_only_when_allowed_and_only_sms_shaped() {
        let mut c = cfg(&["s"], SmsSignatureMethod::Md5hash);
        let unsigned = "https://x/webhooks/v?msisdn=447700900001&to=447700900000&messageId=0A01&text=hi&type=text";
        assert_eq!(
            verify(get(unsigned, NOW), &Keys::from_config(&c)).unwrap_err(),
            VerifyError::Missing
        );
        c.allow_unsigned_sms = true;
        let k = Keys::from_config(&c);
        assert!(verify(get(unsigned, NOW), &k).is_ok());
        assert!(verify(
            post(
                None,
                br#"{"msisdn":"1","to":"2","messageId":"3","status":"delivered"}"#,
                NOW
            ),
            &k
        )
        .is_ok());
        // A Messages API body without its JWT is never accepted.
        assert_eq!(
            verify(post(None, BODY, NOW), &k).unwrap_err(),
            VerifyError::Missing
        );
        assert_eq!(
            verify(get("https://x/webhooks/v?foo=bar", NOW), &k).unwrap_err(),
            VerifyError::Missing
        );
        // A present but wrong sig is still checked.
        let bad = format!(
            "{unsigned}&timestamp={}&sig={}",
            NOW.unix_timestamp(),
            "00".repeat(16)
        );
        assert_eq!(
            verify(get(&bad, NOW), &k).unwrap_err(),
            VerifyError::Mismatch
        );
    }

    #[test]
    fn sign_get_explains_and_never_panics_on_junk() {
        let c = cfg(&["s"], SmsSignatureMethod::Md5hash);
        let err = sign(
            &c,
            &SignRequest {
                method: Method::Get,
                url: "https://x/w?a=1",
                body: b"",
                now: NOW,
            },
        )
        .unwrap_err();
        assert!(err.contains("signed_sms_url"), "{err}");
        let k = Keys::from_config(&c);
        for body in [
            &b"\xff\xfe"[..],
            b"{\"sig\":{}}",
            b"sig=%ZZ&&&==",
            b"{\"a\":[1,{\"b\":null}],\"sig\":\"00\"}",
        ] {
            let _ = verify(post(None, body, NOW), &k);
            let _ = verify(post(Some("Bearer \u{0}\u{1}.x.y"), body, NOW), &k);
        }
        let _ = verify(get("not a url ?sig=%%%", NOW), &k);
    }
}
