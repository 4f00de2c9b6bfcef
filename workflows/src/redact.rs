//! Keeping secrets out of every output: one function, [`redact`], that every
//! path out of the process (errors, logs, the ledger, the quarantine,
//! `status`, `/metrics`) passes its text through.
//!
//! Two rules, both applied to any text:
//!
//! - **Known secrets**: the passwords of the configured URLs and the secret
//!   values of the environment (AWS keys and tokens), registered once at
//!   start-up with [`register_url`] and [`register_secret`], are replaced
//!   wherever they appear, raw or percent-decoded.
//! - **URL shapes**: in anything that looks like `scheme:` followed by a
//!   user and a password before an `@` (including typos such as
//!   `mongodb:/a:pw@h`, and a userinfo that itself holds `@` or `:`), the
//!   password is replaced; so are the values of query parameters whose name
//!   says secret (`password`, `pass`, `pwd`, `secret`, `token`, `key`,
//!   `credential`, `signature`).

use std::borrow::Cow;
use std::sync::RwLock;

/// What a secret is replaced with.
pub const MASK: &str = "***";

/// Secrets shorter than this are not replaced as free text (a one-letter
/// password would blank out every such letter); the URL-shape rule still
/// hides them inside URLs.
const MIN_SECRET: usize = 4;

/// Secrets shorter than this are replaced only as whole words (`root` as a
/// password leaves `root_id` alone); longer ones wherever they appear.
const WHOLE_WORD_BELOW: usize = 8;

static SECRETS: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// Registers a secret value: from now on it is replaced in every text
/// [`redact`] sees, as written and percent-decoded.
pub fn register_secret(secret: &str) {
    let mut add = vec![secret.to_owned()];
    let decoded = percent_decode(secret);
    if decoded != secret {
        add.push(decoded);
    }
    let mut secrets = SECRETS.write().unwrap_or_else(|e| e.into_inner());
    for s in add {
        if s.chars().count() >= MIN_SECRET && !secrets.contains(&s) {
            secrets.push(s);
        }
    }
    // Longest first, so that a secret containing another is replaced whole.
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
}

/// Registers the secrets a URL (or a string that was meant to be one)
/// carries: its password and its secret query parameters.
pub fn register_url(url: &str) {
    for s in url_secrets(url) {
        register_secret(&s);
    }
}

/// Registers the secret values of the standard environment variables
/// (AWS secret keys and session tokens).
pub fn register_env() {
    for var in [
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_SECURITY_TOKEN",
        "CUTOVER_SERVE_TOKEN",
    ] {
        if let Ok(v) = std::env::var(var) {
            register_secret(&v);
        }
    }
}

/// `text` with every registered secret and every password-shaped part of a
/// URL replaced by [`MASK`].
pub fn redact(text: &str) -> Cow<'_, str> {
    let mut out: Cow<'_, str> = Cow::Borrowed(text);
    {
        let secrets = SECRETS.read().unwrap_or_else(|e| e.into_inner());
        for s in secrets.iter() {
            if out.contains(s.as_str()) {
                out = Cow::Owned(if s.len() >= WHOLE_WORD_BELOW {
                    out.replace(s.as_str(), MASK)
                } else {
                    replace_words(&out, s)
                });
            }
        }
    }
    match redact_shapes(&out) {
        Some(changed) => Cow::Owned(changed),
        None => out,
    }
}

/// `text` with `word` replaced where it is not part of a longer word.
fn replace_words(text: &str, word: &str) -> String {
    let is_word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for (i, _) in text.match_indices(word) {
        if i < last {
            continue;
        }
        let before = text[..i].chars().next_back();
        let after = text[i + word.len()..].chars().next();
        if is_word(before) || is_word(after) {
            continue;
        }
        out.push_str(&text[last..i]);
        out.push_str(MASK);
        last = i + word.len();
    }
    out.push_str(&text[last..]);
    out
}

/// The secrets in one URL-like string: the password of its userinfo and the
/// values of its secret query parameters.
pub fn url_secrets(url: &str) -> Vec<String> {
    let mut out = Vec::new();
    if let Some((start, end)) = password_span(url, 0) {
        out.push(url[start..end].to_owned());
    }
    for (start, end) in secret_params(url) {
        out.push(url[start..end].to_owned());
    }
    out
}

/// Whether `b` can be part of a URL scheme.
fn scheme_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.')
}

/// Where a URL-like token starting at `from` ends: at whitespace, a quote
/// or a bracket that cannot be part of it.
fn token_end(text: &str, from: usize) -> usize {
    text[from..]
        .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '`' | '<' | '>'))
        .map_or(text.len(), |i| from + i)
}

/// The byte span of the password in the URL-like token that starts at
/// `from`: after `scheme:` and any slashes, the userinfo runs to the last
/// `@` before the path; the user is up to its first `:`, the password the
/// rest.
fn password_span(text: &str, from: usize) -> Option<(usize, usize)> {
    let end = token_end(text, from);
    let token = &text[from..end];
    let colon = token.find(':')?;
    if colon == 0 || !token.as_bytes()[..colon].iter().all(|b| scheme_byte(*b)) {
        return None;
    }
    let rest_start = colon
        + 1
        + token[colon + 1..]
            .bytes()
            .take_while(|b| *b == b'/')
            .count();
    let rest = &token[rest_start..];
    // The userinfo ends at the last `@` before the query; a password may
    // hold `/`, so the path is not looked for first.
    let query = rest.find('?').unwrap_or(rest.len());
    let at = rest[..query].rfind('@')?;
    let userinfo = &rest[..at];
    let user_end = userinfo.find(':')?;
    let (s, e) = (rest_start + user_end + 1, rest_start + at);
    (e > s).then_some((from + s, from + e))
}

/// Query parameter names whose values are secrets.
fn secret_name(name: &str) -> bool {
    let n = name.to_ascii_lowercase().replace(['-', '_'], "");
    matches!(
        n.as_str(),
        "pass"
            | "pwd"
            | "key"
            | "apikey"
            | "sig"
            | "signature"
            | "credential"
            | "credentials"
            | "xamzsignature"
            | "xamzcredential"
            | "xamzsecuritytoken"
    ) || ["password", "passwd", "secret", "token"]
        .iter()
        .any(|w| n.ends_with(w))
}

/// The byte spans of the values of secret query parameters in `url`.
fn secret_params(url: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let Some(q) = url.find('?') else {
        return out;
    };
    let end = token_end(url, q);
    let mut pos = q + 1;
    for part in url[q + 1..end].split(['&', ';']) {
        if let Some(eq) = part.find('=') {
            if secret_name(&part[..eq]) && eq + 1 < part.len() {
                out.push((pos + eq + 1, pos + part.len()));
            }
        }
        pos += part.len() + 1;
    }
    out
}

/// Replaces the password-shaped parts of every URL-like token in `text`;
/// `None` when there is none.
fn redact_shapes(text: &str) -> Option<String> {
    let mut spans: Vec<(usize, usize)> = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        // A token starts at a scheme: a letter not preceded by a scheme byte.
        let starts = bytes[i].is_ascii_alphabetic() && (i == 0 || !scheme_byte(bytes[i - 1]));
        if starts {
            let end = token_end(text, i);
            let token = &text[i..end];
            if token.contains(':') && (token.contains('@') || token.contains('?')) {
                if let Some(span) = password_span(text, i) {
                    if !text[span.0..span.1].starts_with(MASK) {
                        spans.push(span);
                    }
                }
                for (s, e) in secret_params(&text[i..end]) {
                    if !text[i + s..i + e].starts_with(MASK) {
                        spans.push((i + s, i + e));
                    }
                }
            }
            i = end.max(i + 1);
        } else {
            i += 1;
        }
    }
    if spans.is_empty() {
        return None;
    }
    spans.sort_unstable();
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for (s, e) in spans {
        if s < last {
            continue;
        }
        out.push_str(&text[last..s]);
        out.push_str(MASK);
        last = e;
    }
    out.push_str(&text[last..]);
    Some(out)
}

/// Decodes `%XX` escapes; anything that is not a valid escape stays.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && bytes[i + 1].is_ascii_hexdigit()
            && bytes[i + 2].is_ascii_hexdigit()
        {
            let hex = |b: u8| (b as char).to_digit(16).unwrap_or(0) as u8;
            out.push(hex(bytes[i + 1]) * 16 + hex(bytes[i + 2]));
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap_or_else(|_| s.to_owned())
}

/// `url` with its password and secret parameters hidden, for messages.
pub fn redact_url(url: &str) -> String {
    redact(url).into_owned()
}

/// An error and its causes as one line, `a: b: c`, leaving out a cause
/// whose text its parent already ends with (drivers often repeat their
/// source in their own message).
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(err) = source {
        let text = err.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = err.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hides_the_password_of_every_url_form() {
        let cases = [
            (
                "mysql://root:SECRET@db:3306/w",
                "mysql://root:***@db:3306/w",
            ),
            (
                "postgres://adm@srv:SECRET@h/d",
                "postgres://adm@srv:***@h/d",
            ),
            ("mysql://l:p@SECRET@h/w", "mysql://l:***@h/w"),
            ("mongodb:/a:SECRET@m/app", "mongodb:/a:***@m/app"),
            (
                "mongodb+srv://u:SE%2FCRET@c.example.net/?w=1",
                "mongodb+srv://u:***@c.example.net/?w=1",
            ),
            (
                "postgres://u@h/d?password=SECRET&sslmode=require",
                "postgres://u@h/d?password=***&sslmode=require",
            ),
            ("mysql://u:pa/ss@h/w", "mysql://u:***@h/w"),
            ("sqlite:.cutover/w.db", "sqlite:.cutover/w.db"),
            ("postgres://u@h/d", "postgres://u@h/d"),
        ];
        for (url, want) in cases {
            assert_eq!(
                redact_shapes(url).unwrap_or_else(|| url.to_owned()),
                want,
                "{url}"
            );
        }
    }

    #[test]
    fn hides_urls_inside_messages_and_registered_secrets_anywhere() {
        let msg = "cannot connect to \"mysql://l:hunter22@h/w\": refused";
        assert_eq!(
            redact(msg),
            "cannot connect to \"mysql://l:***@h/w\": refused"
        );
        register_url("postgres://x:Canary-9f2@h/d");
        assert_eq!(
            redact("auth failed for password Canary-9f2 (Canary%2D9f2)"),
            "auth failed for password *** (Canary%2D9f2)"
        );
        register_secret("Sp%40ce42");
        assert_eq!(redact("saw Sp@ce42 and Sp%40ce42"), "saw *** and ***");
        // Short secrets are only hidden inside URLs; middling ones as words.
        register_secret("pw");
        assert_eq!(redact("pwd pw"), "pwd pw");
        register_secret("root");
        assert_eq!(redact("root_id root, root"), "root_id ***, ***");
        assert_eq!(
            redact("mongodb://h/app?authSource=admin&date_key=1&token=abc"),
            "mongodb://h/app?authSource=admin&date_key=1&token=***"
        );
        assert_eq!(
            url_secrets("mysql://l:p@SECRET@h/w"),
            vec!["p@SECRET".to_owned()]
        );
        register_url("postgres://u@h/d?password=Canary-77");
        assert_eq!(
            redact("at postgres://u@h/d?password=Canary-77: refused"),
            "at postgres://u@h/d?password=***: refused"
        );
    }
}
