//! HTTP Digest authentication (RFC 7616) as IP devices use it, both ends, without I/O.
//!
//! * [`parse_challenges`] splits a `WWW-Authenticate` value into its challenges. One header can
//!   hold several (`Digest qop="auth", realm="IP Camera(76475)", ..., Basic realm="..."`),
//!   parameters come in any order, values may be quoted or not, and flags are compared without
//!   case (`stale="FALSE"`).
//! * [`DigestChallenge`] is a parsed `Digest` challenge; [`DigestSession`] answers it with
//!   `qop=auth`, a fresh client nonce per request and an increasing nonce count, and is replaced
//!   when the server sends a new challenge (`stale=true`).
//! * [`DigestAuthorization`] is the server's view of an `Authorization: Digest ...` header, with
//!   [`DigestAuthorization::verify`]; the simulator uses it.
//!
//! Algorithms: `MD5` (what devices send, and the default when the challenge names none),
//! `MD5-sess`, `SHA-256`, `SHA-256-sess`. Only `qop=auth` is used; a challenge without `qop`
//! gets the RFC 2069 answer.

use std::fmt::Write as _;

use md5::{Digest as _, Md5};
use sha2::Sha256;

/// One challenge from a `WWW-Authenticate` header: a scheme and its parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// The scheme as sent (`Digest`, `Basic`).
    pub scheme: String,
    /// Parameters in order, names as sent, values unquoted.
    pub params: Vec<(String, String)>,
}

impl Challenge {
    /// A parameter's value; names compare without case.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// True when the scheme is `scheme`, compared without case.
    pub fn is(&self, scheme: &str) -> bool {
        self.scheme.eq_ignore_ascii_case(scheme)
    }
}

/// Split a `WWW-Authenticate` (or `Authorization`) value into challenges. Never fails: text that
/// is not a challenge is skipped.
pub fn parse_challenges(header: &str) -> Vec<Challenge> {
    let mut lexer = Lexer {
        text: header,
        pos: 0,
    };
    let mut challenges: Vec<Challenge> = Vec::new();
    loop {
        lexer.skip_separators();
        let Some(token) = lexer.token() else {
            if lexer.at_end() {
                break;
            }
            // Stray character (a lone `=` or quote): skip it.
            lexer.bump();
            continue;
        };
        lexer.skip_spaces();
        if lexer.peek() == Some('=') {
            lexer.bump();
            lexer.skip_spaces();
            let value = lexer.value();
            match challenges.last_mut() {
                Some(challenge) => challenge.params.push((token.to_string(), value)),
                None => continue, // a parameter before any scheme
            }
        } else {
            challenges.push(Challenge {
                scheme: token.to_string(),
                params: Vec::new(),
            });
        }
    }
    challenges
}

struct Lexer<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Lexer<'a> {
    fn peek(&self) -> Option<char> {
        self.text[self.pos..].chars().next()
    }

    fn bump(&mut self) {
        if let Some(c) = self.peek() {
            self.pos += c.len_utf8();
        }
    }

    fn at_end(&self) -> bool {
        self.pos >= self.text.len()
    }

    fn skip_spaces(&mut self) {
        while matches!(self.peek(), Some(c) if c.is_whitespace()) {
            self.bump();
        }
    }

    fn skip_separators(&mut self) {
        while matches!(self.peek(), Some(c) if c.is_whitespace() || c == ',') {
            self.bump();
        }
    }

    fn token(&mut self) -> Option<&'a str> {
        let start = self.pos;
        while matches!(self.peek(), Some(c) if !(c.is_whitespace() || matches!(c, ',' | '=' | '"')))
        {
            self.bump();
        }
        (self.pos > start).then(|| &self.text[start..self.pos])
    }

    /// A quoted string (with `\` escapes) or a token; empty when neither.
    fn value(&mut self) -> String {
        if self.peek() == Some('"') {
            self.bump();
            let mut value = String::new();
            while let Some(c) = self.peek() {
                self.bump();
                match c {
                    '"' => break,
                    '\\' => {
                        if let Some(escaped) = self.peek() {
                            value.push(escaped);
                            self.bump();
                        }
                    }
                    c => value.push(c),
                }
            }
            value
        } else {
            let start = self.pos;
            while matches!(self.peek(), Some(c) if !(c.is_whitespace() || c == ',')) {
                self.bump();
            }
            self.text[start..self.pos].to_string()
        }
    }
}

/// A digest hash algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// `MD5`, the default and what Hikvision devices use.
    Md5,
    /// `MD5-sess`.
    Md5Sess,
    /// `SHA-256`.
    Sha256,
    /// `SHA-256-sess`.
    Sha256Sess,
}

impl Algorithm {
    /// Parse an `algorithm` value, without case. `None` for unsupported ones.
    pub fn parse(text: &str) -> Option<Algorithm> {
        let text = text.trim();
        [
            ("MD5", Algorithm::Md5),
            ("MD5-sess", Algorithm::Md5Sess),
            ("SHA-256", Algorithm::Sha256),
            ("SHA-256-sess", Algorithm::Sha256Sess),
        ]
        .into_iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(text))
        .map(|(_, a)| a)
    }

    /// The name as written in headers.
    pub fn as_str(&self) -> &'static str {
        match self {
            Algorithm::Md5 => "MD5",
            Algorithm::Md5Sess => "MD5-sess",
            Algorithm::Sha256 => "SHA-256",
            Algorithm::Sha256Sess => "SHA-256-sess",
        }
    }

    fn is_session(&self) -> bool {
        matches!(self, Algorithm::Md5Sess | Algorithm::Sha256Sess)
    }

    /// Lower-case hex hash of `data`.
    pub fn hash_hex(&self, data: &str) -> String {
        match self {
            Algorithm::Md5 | Algorithm::Md5Sess => hex::encode(Md5::digest(data.as_bytes())),
            Algorithm::Sha256 | Algorithm::Sha256Sess => {
                hex::encode(Sha256::digest(data.as_bytes()))
            }
        }
    }
}

/// A parsed `Digest` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigestChallenge {
    /// The realm (`IP Camera(C2183)`).
    pub realm: String,
    /// The server nonce.
    pub nonce: String,
    /// The opaque value to echo back; `Some("")` when the server sent `opaque=""`.
    pub opaque: Option<String>,
    /// The hash algorithm.
    pub algorithm: Algorithm,
    /// True when the challenge named an algorithm (then the answer names it too).
    pub algorithm_named: bool,
    /// True when the server offers `qop=auth`; false for an RFC 2069 challenge without `qop`.
    pub qop_auth: bool,
    /// True when the server says the previous nonce expired but the credentials were right.
    pub stale: bool,
}

impl DigestChallenge {
    /// Read a `Digest` challenge. `Err` says why it cannot be answered (no nonce, an
    /// unsupported algorithm, only `auth-int`).
    pub fn from_challenge(challenge: &Challenge) -> Result<DigestChallenge, String> {
        if !challenge.is("Digest") {
            return Err(format!("`{}` is not a Digest challenge", challenge.scheme));
        }
        let nonce = challenge
            .param("nonce")
            .filter(|n| !n.is_empty())
            .ok_or("the Digest challenge has no nonce")?;
        let (algorithm, algorithm_named) = match challenge.param("algorithm") {
            None => (Algorithm::Md5, false),
            Some(name) => (
                Algorithm::parse(name)
                    .ok_or_else(|| format!("unsupported digest algorithm `{name}`"))?,
                true,
            ),
        };
        let qop_auth = match challenge.param("qop") {
            None => false,
            Some(list) => {
                if list
                    .split(',')
                    .any(|q| q.trim().eq_ignore_ascii_case("auth"))
                {
                    true
                } else {
                    return Err(format!(
                        "unsupported qop `{list}` (only `auth` is supported)"
                    ));
                }
            }
        };
        Ok(DigestChallenge {
            realm: challenge.param("realm").unwrap_or_default().to_string(),
            nonce: nonce.to_string(),
            opaque: challenge.param("opaque").map(str::to_string),
            algorithm,
            algorithm_named,
            qop_auth,
            stale: challenge
                .param("stale")
                .is_some_and(|s| s.trim().eq_ignore_ascii_case("true")),
        })
    }

    /// The first answerable Digest challenge of a header value, if any.
    pub fn first_in(challenges: &[Challenge]) -> Option<DigestChallenge> {
        challenges
            .iter()
            .filter(|c| c.is("Digest"))
            .find_map(|c| DigestChallenge::from_challenge(c).ok())
    }
}

/// The client side: answers one challenge, request after request, counting nonce uses.
#[derive(Debug, Clone)]
pub struct DigestSession {
    challenge: DigestChallenge,
    nonce_count: u32,
}

impl DigestSession {
    /// A session for a fresh challenge.
    pub fn new(challenge: DigestChallenge) -> Self {
        DigestSession {
            challenge,
            nonce_count: 0,
        }
    }

    /// The challenge being answered.
    pub fn challenge(&self) -> &DigestChallenge {
        &self.challenge
    }

    /// How many requests used this nonce so far.
    pub fn nonce_count(&self) -> u32 {
        self.nonce_count
    }

    /// The `Authorization` value for one request; counts one more use of the nonce.
    /// `uri` is the request target as sent (path and query).
    pub fn authorize(
        &mut self,
        method: &str,
        uri: &str,
        username: &str,
        password: &str,
        cnonce: &str,
    ) -> String {
        self.nonce_count = self.nonce_count.wrapping_add(1);
        let c = &self.challenge;
        let nc = format!("{:08x}", self.nonce_count);
        let response = compute_response(&ResponseInputs {
            algorithm: c.algorithm,
            username,
            realm: &c.realm,
            password,
            nonce: &c.nonce,
            qop_auth: c.qop_auth,
            nc: &nc,
            cnonce,
            method,
            uri,
        });
        let mut header = String::from("Digest ");
        let _ = write!(
            header,
            "username=\"{}\", realm=\"{}\", nonce=\"{}\", uri=\"{}\"",
            quote(username),
            quote(&c.realm),
            quote(&c.nonce),
            quote(uri)
        );
        if c.algorithm_named {
            let _ = write!(header, ", algorithm={}", c.algorithm.as_str());
        }
        let _ = write!(header, ", response=\"{response}\"");
        if let Some(opaque) = &c.opaque {
            let _ = write!(header, ", opaque=\"{}\"", quote(opaque));
        }
        if c.qop_auth {
            let _ = write!(header, ", qop=auth, nc={nc}, cnonce=\"{}\"", quote(cnonce));
        }
        header
    }
}

/// A fresh random client nonce (16 random bytes, hex).
pub fn new_cnonce() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

fn quote(text: &str) -> String {
    text.replace('\\', "\\\\").replace('"', "\\\"")
}

struct ResponseInputs<'a> {
    algorithm: Algorithm,
    username: &'a str,
    realm: &'a str,
    password: &'a str,
    nonce: &'a str,
    qop_auth: bool,
    nc: &'a str,
    cnonce: &'a str,
    method: &'a str,
    uri: &'a str,
}

fn compute_response(i: &ResponseInputs<'_>) -> String {
    let h = |data: &str| i.algorithm.hash_hex(data);
    let mut ha1 = h(&format!("{}:{}:{}", i.username, i.realm, i.password));
    if i.algorithm.is_session() {
        ha1 = h(&format!("{ha1}:{}:{}", i.nonce, i.cnonce));
    }
    let ha2 = h(&format!("{}:{}", i.method, i.uri));
    if i.qop_auth {
        h(&format!(
            "{ha1}:{}:{}:{}:auth:{ha2}",
            i.nonce, i.nc, i.cnonce
        ))
    } else {
        h(&format!("{ha1}:{}:{ha2}", i.nonce))
    }
}

/// The server side: a parsed `Authorization: Digest ...` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigestAuthorization {
    /// User name.
    pub username: String,
    /// Realm the client answered.
    pub realm: String,
    /// Nonce the client answered.
    pub nonce: String,
    /// Request target the client hashed.
    pub uri: String,
    /// The client's response hash.
    pub response: String,
    /// Algorithm (MD5 when not named).
    pub algorithm: Algorithm,
    /// `qop` the client used (`auth`), if any.
    pub qop: Option<String>,
    /// Nonce count, parsed from hex.
    pub nc: Option<u32>,
    /// The raw nonce count text.
    pub nc_text: Option<String>,
    /// Client nonce.
    pub cnonce: Option<String>,
    /// Echoed opaque value.
    pub opaque: Option<String>,
}

impl DigestAuthorization {
    /// Parse an `Authorization` value; `None` when it is not a complete Digest answer.
    pub fn parse(header: &str) -> Option<DigestAuthorization> {
        let challenge = parse_challenges(header)
            .into_iter()
            .find(|c| c.is("Digest"))?;
        let get = |name: &str| challenge.param(name).map(str::to_string);
        let algorithm = match challenge.param("algorithm") {
            None => Algorithm::Md5,
            Some(name) => Algorithm::parse(name)?,
        };
        let nc_text = get("nc");
        Some(DigestAuthorization {
            username: get("username")?,
            realm: get("realm").unwrap_or_default(),
            nonce: get("nonce")?,
            uri: get("uri")?,
            response: get("response")?,
            algorithm,
            qop: get("qop"),
            nc: nc_text
                .as_deref()
                .and_then(|t| u32::from_str_radix(t, 16).ok()),
            nc_text,
            cnonce: get("cnonce"),
            opaque: get("opaque"),
        })
    }

    /// True when the response matches `password` for `method` (constant-time comparison).
    pub fn verify(&self, method: &str, password: &str) -> bool {
        let qop_auth = self
            .qop
            .as_deref()
            .is_some_and(|q| q.eq_ignore_ascii_case("auth"));
        if self.qop.is_some() && !qop_auth {
            return false;
        }
        let expected = compute_response(&ResponseInputs {
            algorithm: self.algorithm,
            username: &self.username,
            realm: &self.realm,
            password,
            nonce: &self.nonce,
            qop_auth,
            nc: self.nc_text.as_deref().unwrap_or(""),
            cnonce: self.cnonce.as_deref().unwrap_or(""),
            method,
            uri: &self.uri,
        });
        constant_time_eq(
            expected.as_bytes(),
            self.response.to_ascii_lowercase().as_bytes(),
        )
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_digest_and_basic_in_one_header() {
        let header = r#"Digest qop="auth", realm="IP Camera(76475)", nonce="4e44", stale="FALSE", Basic realm="IP Camera(76475)""#;
        let challenges = parse_challenges(header);
        assert_eq!(challenges.len(), 2);
        assert!(challenges[0].is("digest"));
        assert_eq!(challenges[0].param("REALM"), Some("IP Camera(76475)"));
        assert!(challenges[1].is("Basic"));
        assert_eq!(challenges[1].param("realm"), Some("IP Camera(76475)"));
        let digest = DigestChallenge::first_in(&challenges).unwrap();
        assert!(digest.qop_auth);
        assert!(!digest.stale);
        assert_eq!(digest.opaque, None);
    }

    #[test]
    fn reads_nvr_style_parameters() {
        let header = r#"Digest realm="fe12f37bd", domain="::", qop="auth", nonce="300b:1685", opaque="", algorithm="MD5", stale="TRUE""#;
        let digest = DigestChallenge::first_in(&parse_challenges(header)).unwrap();
        assert_eq!(digest.opaque.as_deref(), Some(""));
        assert_eq!(digest.algorithm, Algorithm::Md5);
        assert!(digest.algorithm_named);
        assert!(digest.stale);
        assert_eq!(digest.nonce, "300b:1685");
    }

    #[test]
    fn rfc_2617_example_response() {
        // RFC 2617 section 3.5.
        let header = r#"Digest realm="testrealm@host.com", qop="auth,auth-int", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", opaque="5ccc069c403ebaf9f0171e9517f40e41""#;
        let mut session =
            DigestSession::new(DigestChallenge::first_in(&parse_challenges(header)).unwrap());
        let auth = session.authorize(
            "GET",
            "/dir/index.html",
            "Mufasa",
            "Circle Of Life",
            "0a4f113b",
        );
        assert!(
            auth.contains(r#"response="6629fae49393a05397450978507c4ef1""#),
            "{auth}"
        );
        assert!(auth.contains("nc=00000001"));
        let second = session.authorize(
            "GET",
            "/dir/index.html",
            "Mufasa",
            "Circle Of Life",
            "0a4f113b",
        );
        assert!(second.contains("nc=00000002"));
    }

    #[test]
    fn rfc_7616_sha256_example_response() {
        // RFC 7616 section 3.9.1.
        let header = r#"Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm=SHA-256, nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS""#;
        let mut session =
            DigestSession::new(DigestChallenge::first_in(&parse_challenges(header)).unwrap());
        let auth = session.authorize(
            "GET",
            "/dir/index.html",
            "Mufasa",
            "Circle of Life",
            "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
        );
        assert!(
            auth.contains(
                r#"response="753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1""#
            ),
            "{auth}"
        );
    }

    #[test]
    fn server_verifies_what_the_client_computed() {
        for algorithm in ["MD5", "MD5-sess", "SHA-256", "SHA-256-sess"] {
            let header =
                format!(r#"Digest realm="r(1)", qop="auth", nonce="n1", algorithm={algorithm}"#);
            let mut session =
                DigestSession::new(DigestChallenge::first_in(&parse_challenges(&header)).unwrap());
            let auth = session.authorize(
                "PUT",
                "/ISAPI/System/reboot",
                "ad\"min",
                "pw",
                &new_cnonce(),
            );
            let parsed = DigestAuthorization::parse(&auth).unwrap();
            assert_eq!(parsed.username, "ad\"min");
            assert_eq!(parsed.nc, Some(1));
            assert!(parsed.verify("PUT", "pw"), "{algorithm}");
            assert!(!parsed.verify("PUT", "wrong"));
            assert!(!parsed.verify("GET", "pw"));
        }
        // RFC 2069 style (no qop).
        let mut session = DigestSession::new(
            DigestChallenge::first_in(&parse_challenges(
                r#"Digest realm="IP Camera(C2875)", nonce="938032d9", stale="FALSE""#,
            ))
            .unwrap(),
        );
        let auth = session.authorize("GET", "/", "u", "p", "c");
        assert!(!auth.contains("qop"));
        assert!(
            DigestAuthorization::parse(&auth)
                .unwrap()
                .verify("GET", "p")
        );
    }

    #[test]
    fn odd_headers_do_not_panic_and_give_no_digest() {
        for header in [
            "",
            "=",
            "\"",
            "Digest",
            "Digest nonce",
            "Digest nonce=\"",
            ",,,",
            "Basic realm=\"x\"",
            "Digest realm=\"x\", nonce=\"n\", algorithm=SHA-512",
            "Digest nonce=n, qop=auth-int",
            "é=é",
        ] {
            let challenges = parse_challenges(header);
            let _ = DigestChallenge::first_in(&challenges);
        }
        assert!(DigestChallenge::first_in(&parse_challenges("Basic realm=\"x\"")).is_none());
        assert!(
            DigestChallenge::first_in(&parse_challenges("Digest nonce=n, qop=auth-int")).is_none()
        );
    }
}
