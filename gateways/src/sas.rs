//! Shared access signature tokens (IoT Hub §1): parsing, signing and verification.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Characters the device SDK leaves unescaped (`urllib.parse.quote(s, safe="")`).
const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Why a token was refused. Messages never contain the signature.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SasError {
    #[error("malformed SAS token: {0}")]
    Malformed(&'static str),
    #[error("SAS token expired at {expiry} (now {now})")]
    Expired { expiry: i64, now: i64 },
    #[error("SAS token is for resource {got:?}, not {want:?}")]
    WrongResource { got: String, want: String },
    #[error("SAS token signature does not match any key")]
    BadSignature,
    #[error("key is not valid base64")]
    BadKey,
}

/// A parsed token. `sr_raw` and `se_raw` are kept exactly as sent: the signature covers
/// the raw text, not a re-encoding of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SasToken<'a> {
    pub sr_raw: &'a str,
    /// `sr`, percent-decoded.
    pub resource: String,
    pub sig: Vec<u8>,
    pub se_raw: &'a str,
    pub expiry: i64,
    pub skn: Option<String>,
}

/// Parses `SharedAccessSignature sr=..&sig=..&se=..[&skn=..]`, fields in any order.
pub fn parse(token: &str) -> Result<SasToken<'_>, SasError> {
    let body = token
        .strip_prefix("SharedAccessSignature ")
        .ok_or(SasError::Malformed(
            "must start with 'SharedAccessSignature '",
        ))?
        .trim();
    let (mut sr, mut sig, mut se, mut skn) = (None, None, None, None);
    for part in body.split('&') {
        let (k, v) = part
            .split_once('=')
            .ok_or(SasError::Malformed("every field must be key=value"))?;
        let slot = match k {
            "sr" => &mut sr,
            "sig" => &mut sig,
            "se" => &mut se,
            "skn" => &mut skn,
            _ => continue,
        };
        if slot.replace(v).is_some() {
            return Err(SasError::Malformed("a field appears twice"));
        }
    }
    let sr_raw = sr.ok_or(SasError::Malformed("missing sr"))?;
    let sig_raw = sig.ok_or(SasError::Malformed("missing sig"))?;
    let se_raw = se.ok_or(SasError::Malformed("missing se"))?;
    let decode = |s: &str| {
        percent_decode_str(s)
            .decode_utf8()
            .map(|c| c.into_owned())
            .map_err(|_| SasError::Malformed("invalid percent-encoding"))
    };
    let sig = STANDARD
        .decode(decode(sig_raw)?)
        .map_err(|_| SasError::Malformed("sig is not base64"))?;
    let expiry = se_raw
        .parse::<i64>()
        .map_err(|_| SasError::Malformed("se must be seconds since the epoch"))?;
    Ok(SasToken {
        sr_raw,
        resource: decode(sr_raw)?,
        sig,
        se_raw,
        expiry,
        skn: skn.map(decode).transpose()?,
    })
}

fn mac(key_b64: &str) -> Result<HmacSha256, SasError> {
    let key = STANDARD.decode(key_b64).map_err(|_| SasError::BadKey)?;
    HmacSha256::new_from_slice(&key).map_err(|_| SasError::BadKey)
}

/// The base64 signature of `sr_encoded + "\n" + se`.
pub fn sign(key_b64: &str, sr_encoded: &str, se: &str) -> Result<String, SasError> {
    let mut m = mac(key_b64)?;
    m.update(sr_encoded.as_bytes());
    m.update(b"\n");
    m.update(se.as_bytes());
    Ok(STANDARD.encode(m.finalize().into_bytes()))
}

/// Builds a token the way the device SDK does.
pub fn build(
    resource: &str,
    key_b64: &str,
    expiry: i64,
    skn: Option<&str>,
) -> Result<String, SasError> {
    let sr = utf8_percent_encode(resource, UNRESERVED).to_string();
    let se = expiry.to_string();
    let sig = sign(key_b64, &sr, &se)?;
    let mut t = format!(
        "SharedAccessSignature sr={sr}&sig={}&se={se}",
        utf8_percent_encode(&sig, UNRESERVED)
    );
    if let Some(n) = skn {
        t.push_str("&skn=");
        t.push_str(&utf8_percent_encode(n, UNRESERVED).to_string());
    }
    Ok(t)
}

/// True when `resource` is `expected` or a whole-segment prefix of it, ignoring case.
fn covers(resource: &str, expected: &str) -> bool {
    let r = resource.trim_end_matches('/').to_ascii_lowercase();
    let e = expected.to_ascii_lowercase();
    e == r || (e.starts_with(&r) && e.as_bytes().get(r.len()) == Some(&b'/'))
}

/// Checks a token against the resource it must cover, the current time and the keys
/// (any may match); returns the index of the key that signed it. The signature comparison
/// is constant-time.
pub fn verify(
    token: &SasToken<'_>,
    expected_resource: &str,
    keys: &[&str],
    now: i64,
) -> Result<usize, SasError> {
    if token.expiry < now {
        return Err(SasError::Expired {
            expiry: token.expiry,
            now,
        });
    }
    if !covers(&token.resource, expected_resource) {
        return Err(SasError::WrongResource {
            got: token.resource.clone(),
            want: expected_resource.to_owned(),
        });
    }
    // The signature covers `sr` as sent; SDKs differ in how they encode it, so also try
    // the canonical upper- and lower-case encodings of the decoded resource.
    let canonical = utf8_percent_encode(&token.resource, UNRESERVED).to_string();
    let lower = lower_hex_escapes(&canonical);
    let lower_resource =
        utf8_percent_encode(&token.resource.to_ascii_lowercase(), UNRESERVED).to_string();
    let lower_lower = lower_hex_escapes(&lower_resource);
    let candidates = [
        token.sr_raw,
        &canonical,
        &lower,
        &lower_resource,
        &lower_lower,
    ];
    for (k, key) in keys.iter().enumerate() {
        for (i, sr) in candidates.iter().enumerate() {
            if candidates[..i].contains(sr) {
                continue;
            }
            let mut m = mac(key)?;
            m.update(sr.as_bytes());
            m.update(b"\n");
            m.update(token.se_raw.as_bytes());
            if m.verify_slice(&token.sig).is_ok() {
                return Ok(k);
            }
        }
    }
    Err(SasError::BadSignature)
}

fn lower_hex_escapes(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        out.push(c);
        if c == '%' {
            for _ in 0..2 {
                if let Some(h) = chars.next() {
                    out.push(h.to_ascii_lowercase());
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

    #[test]
    fn matches_the_sdk_test_vectors() {
        assert_eq!(
            build(
                "myhub.azure-devices.net/devices/dev1",
                KEY,
                1_700_000_000,
                None
            )
            .expect("token"),
            "SharedAccessSignature sr=myhub.azure-devices.net%2Fdevices%2Fdev1&sig=i%2BYmMcSSZc4KzBi6ejz3l0iL%2B2sN0CE3q6vSm837h2g%3D&se=1700000000"
        );
        assert_eq!(
            build(
                "myhub.azure-devices.net/devices/dev1/modules/mod1",
                KEY,
                1_700_000_000,
                None
            )
            .expect("token"),
            "SharedAccessSignature sr=myhub.azure-devices.net%2Fdevices%2Fdev1%2Fmodules%2Fmod1&sig=kA6xjFLkZvk4Cdh0nD8uWAzassq6PB47f7BepMMtmlY%3D&se=1700000000"
        );
    }

    #[test]
    fn verifies_resource_expiry_and_signature() {
        let t = build("localhost/devices/dev1", KEY, 2_000, None).expect("token");
        let p = parse(&t).expect("parses");
        assert_eq!(p.resource, "localhost/devices/dev1");
        assert!(verify(&p, "localhost/devices/dev1", &[KEY], 1_000).is_ok());
        assert!(verify(&p, "LOCALHOST/devices/dev1", &["AAAA", KEY], 1_000).is_ok());
        assert!(matches!(
            verify(&p, "localhost/devices/dev1", &[KEY], 3_000),
            Err(SasError::Expired { .. })
        ));
        assert!(matches!(
            verify(&p, "localhost/devices/dev10", &[KEY], 1_000),
            Err(SasError::WrongResource { .. })
        ));
        let other = "BBECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
        assert_eq!(
            verify(&p, "localhost/devices/dev1", &[other], 1_000),
            Err(SasError::BadSignature)
        );
    }

    #[test]
    fn accepts_service_sdk_encoding_and_any_field_order() {
        // azure-iot-hub: sr via quote_plus, sig via quote (leaves '/').
        let sig = sign(KEY, "localhost", "2000").expect("sig");
        let t = format!(
            "SharedAccessSignature skn=iothubowner&se=2000&sig={}&sr=localhost",
            sig.replace('+', "%2B").replace('=', "%3D")
        );
        let p = parse(&t).expect("parses");
        assert_eq!(p.skn.as_deref(), Some("iothubowner"));
        assert!(verify(&p, "localhost", &[KEY], 1_000).is_ok());
        assert!(parse("sr=a&sig=b&se=1").is_err());
        assert!(parse("SharedAccessSignature sr=a&se=1").is_err());
        assert!(parse("SharedAccessSignature sr=a&sig=AAAA&se=soon").is_err());
    }
}
