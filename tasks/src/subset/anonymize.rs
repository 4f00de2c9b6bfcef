//! Pseudonyms for a development copy: every id and every free text of a
//! document replaced by an HMAC-SHA256 of it under a secret key, so that
//! the same value always maps to the same pseudonym and none can be traced
//! back without the key; the event model's categories (types, plans,
//! countries, devices, channels), numbers and times kept, times optionally
//! shifted by whole days; `_id`s re-minted in the same order with the same
//! (shifted) time inside.

use bson::{oid::ObjectId, Bson, Document};
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Fields of the event model's documents whose values are categories or
/// measures, kept as they are.
const KEPT: &[&str] = &[
    "type",
    "v",
    "plan",
    "country",
    "device",
    "channel",
    "slide",
    "slide_count",
    "dwell_ms",
    "dwellMs",
];

/// Id fields, and the prefix of their pseudonyms.
const IDS: &[(&str, &str)] = &[
    ("user_id", "user-"),
    ("session_id", "session-"),
    ("presentation_id", "presentation-"),
];

/// The length of a UTC day in milliseconds.
const DAY_MS: i64 = 86_400_000;

/// The shortest key accepted, in bytes.
pub const MIN_KEY: usize = 16;

/// Replaces ids and text with keyed pseudonyms.
#[derive(Clone)]
pub struct Anonymizer {
    mac: Hmac<Sha256>,
    shift_days: i64,
}

impl std::fmt::Debug for Anonymizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Anonymizer")
            .field("key", &"<hidden>")
            .field("shift_days", &self.shift_days)
            .finish()
    }
}

/// A key that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("the anonymisation key is {0} bytes long; it needs at least {MIN_KEY} (e.g. `openssl rand -hex 32`)")]
pub struct ShortKey(pub usize);

impl Anonymizer {
    /// Pseudonyms under `key`, times moved by `shift_days` days.
    ///
    /// # Errors
    /// The key is shorter than [`MIN_KEY`] bytes.
    pub fn new(key: &[u8], shift_days: i64) -> Result<Self, ShortKey> {
        if key.len() < MIN_KEY {
            return Err(ShortKey(key.len()));
        }
        Ok(Self {
            mac: Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length"),
            shift_days,
        })
    }

    /// The days times move by.
    pub fn shift_days(&self) -> i64 {
        self.shift_days
    }

    fn digest(&self, kind: &str, value: &[u8]) -> [u8; 32] {
        let mut mac = self.mac.clone();
        mac.update(kind.as_bytes());
        mac.update(&[0x1f]);
        mac.update(value);
        mac.finalize().into_bytes().into()
    }

    /// The pseudonym of the id `value` of a field (`user_id`,
    /// `presentation_id`, ...): the same value gives the same pseudonym.
    pub fn id(&self, field: &str, value: &str) -> String {
        let prefix = IDS
            .iter()
            .find(|(f, _)| *f == field)
            .map_or("id-", |(_, p)| p);
        format!(
            "{prefix}{}",
            hex::encode(&self.digest(field, value.as_bytes())[..12])
        )
    }

    /// The pseudonym of an event id, shaped as a UUID (version 4 bits set).
    pub fn event_id(&self, value: &str) -> String {
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&self.digest("event_id", value.as_bytes())[..16]);
        uuid::Builder::from_random_bytes(bytes)
            .into_uuid()
            .to_string()
    }

    /// The pseudonym of a free text (a title, a referrer, any text the
    /// model does not name).
    pub fn text(&self, field: &str, value: &str) -> String {
        let h = hex::encode(&self.digest("text", value.as_bytes())[..6]);
        match field {
            "title" => format!("Title {h}"),
            "referrer" => format!("https://{h}.example/"),
            _ => format!("text-{h}"),
        }
    }

    /// An integer id's pseudonym, of the same width.
    fn int(&self, field: &str, value: i64) -> i64 {
        let d = self.digest(field, value.to_string().as_bytes());
        i64::from_be_bytes(d[..8].try_into().expect("8 bytes")) & i64::MAX
    }

    /// A time moved by the shift.
    pub fn time(&self, ms: i64) -> i64 {
        ms.saturating_add(self.shift_days.saturating_mul(DAY_MS))
    }

    /// A UTC date (`YYYY-MM-DD`) moved by the shift.
    pub fn day(&self, day: &str) -> String {
        shift_day(day, self.shift_days)
    }

    /// The document with every id and text replaced; `_id`, when an
    /// ObjectId, becomes `minted` (see [`mint`]).
    pub fn document(&self, doc: &Document, minted: Option<ObjectId>) -> Document {
        let mut out = Document::new();
        for (k, v) in doc {
            let v = match (k.as_str(), v) {
                ("_id", Bson::ObjectId(_)) => minted.map_or_else(|| v.clone(), Bson::ObjectId),
                ("_id", other) => self.free("_id", other),
                ("event_id", Bson::String(s)) => Bson::String(self.event_id(s)),
                (f, Bson::String(s)) if IDS.iter().any(|(i, _)| *i == f) => {
                    Bson::String(self.id(f, s))
                }
                (f, Bson::Int32(i)) if f == "event_id" || IDS.iter().any(|(i, _)| *i == f) => {
                    Bson::Int32((self.int(f, i64::from(*i)) & i64::from(i32::MAX)) as i32)
                }
                (f, Bson::Int64(i)) if f == "event_id" || IDS.iter().any(|(i, _)| *i == f) => {
                    Bson::Int64(self.int(f, *i))
                }
                ("payload", Bson::Document(p)) => Bson::Document(self.payload(p)),
                (f, other) => self.free(f, other),
            };
            out.insert(k.clone(), v);
        }
        out
    }

    fn payload(&self, p: &Document) -> Document {
        p.iter()
            .map(|(k, v)| (k.clone(), self.free(k, v)))
            .collect()
    }

    /// A value of field `field` outside the ids: kept when the field is a
    /// category or a measure; text replaced, times shifted, documents and
    /// arrays gone through.
    fn free(&self, field: &str, v: &Bson) -> Bson {
        if KEPT.contains(&field) && !matches!(v, Bson::Document(_) | Bson::Array(_)) {
            return v.clone();
        }
        match v {
            Bson::String(s) => Bson::String(self.text(field, s)),
            Bson::DateTime(d) => {
                Bson::DateTime(bson::DateTime::from_millis(self.time(d.timestamp_millis())))
            }
            Bson::Document(d) => Bson::Document(
                d.iter()
                    .map(|(k, v)| (k.clone(), self.free(k, v)))
                    .collect(),
            ),
            Bson::Array(a) => Bson::Array(a.iter().map(|v| self.free(field, v)).collect()),
            Bson::Symbol(s) => Bson::String(self.text(field, s)),
            Bson::JavaScriptCode(s) => Bson::String(self.text(field, s)),
            Bson::RegularExpression(r) => Bson::String(self.text(field, &r.pattern)),
            Bson::Binary(b) => Bson::String(self.text(field, &hex::encode(&b.bytes))),
            Bson::ObjectId(o) => Bson::String(self.text(field, &o.to_hex())),
            other => other.clone(),
        }
    }
}

/// A UTC date (`YYYY-MM-DD`) moved by `days` days (as it is if it is not
/// a date).
pub fn shift_day(day: &str, days: i64) -> String {
    chrono::NaiveDate::parse_from_str(day, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.checked_add_signed(chrono::Duration::days(days)))
        .map_or_else(|| day.to_owned(), |d| d.format("%Y-%m-%d").to_string())
}

/// An `_id` minted for the output: the original's time moved by
/// `shift_days`, then its rank among every `_id` written (big-endian), so
/// that the order of `_id`s and the time inside them are kept and nothing
/// else of the original is.
pub fn mint(original: ObjectId, rank: u64, shift_days: i64) -> ObjectId {
    let secs = i64::from(u32::from_be_bytes(
        original.bytes()[..4].try_into().expect("4 bytes"),
    )) + shift_days.saturating_mul(86_400);
    let mut bytes = [0u8; 12];
    bytes[..4].copy_from_slice(&(secs.clamp(0, i64::from(u32::MAX)) as u32).to_be_bytes());
    bytes[4..].copy_from_slice(&rank.to_be_bytes());
    ObjectId::from_bytes(bytes)
}

/// An `_id` with only its time moved by `shift_days` (no anonymisation):
/// the rest of it, and so the order, kept.
pub fn shift(original: ObjectId, shift_days: i64) -> ObjectId {
    let secs = i64::from(u32::from_be_bytes(
        original.bytes()[..4].try_into().expect("4 bytes"),
    )) + shift_days.saturating_mul(86_400);
    let mut bytes = original.bytes();
    bytes[..4].copy_from_slice(&(secs.clamp(0, i64::from(u32::MAX)) as u32).to_be_bytes());
    ObjectId::from_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    fn anon(key: &str) -> Anonymizer {
        Anonymizer::new(key.as_bytes(), 0).unwrap()
    }

    #[test]
    fn the_same_key_gives_the_same_pseudonyms_and_another_key_others() {
        let (a, b) = (anon("0123456789abcdef"), anon("fedcba9876543210"));
        assert_eq!(a.id("user_id", "u1"), a.id("user_id", "u1"));
        assert_ne!(a.id("user_id", "u1"), a.id("user_id", "u2"));
        assert_ne!(a.id("user_id", "u1"), b.id("user_id", "u1"));
        // The same value in another role is another pseudonym.
        assert_ne!(a.id("user_id", "x"), a.id("session_id", "x"));
        assert!(uuid::Uuid::parse_str(&a.event_id("e1")).is_ok());
        assert!(Anonymizer::new(b"short", 0).is_err());
        assert!(!format!("{a:?}").contains("0123456789abcdef"));
    }

    #[test]
    fn ids_and_text_go_categories_and_measures_stay() {
        let a = Anonymizer::new(b"0123456789abcdef", 2).unwrap();
        let ts = bson::DateTime::from_millis(1_700_000_000_000);
        let d = doc! {
            "_id": "plain-id", "event_id": "e-1", "type": "presentation.viewed", "ts": ts,
            "user_id": "alice@example.com", "session_id": "s-1", "presentation_id": "p-1",
            "payload": { "device": "mobile", "referrer": "https://secret.example/alice", "slide": "3" },
            "note": { "free": "Alice's text", "n": 5 },
        };
        let out = a.document(&d, None);
        let text = format!("{out:?}");
        for original in ["plain-id", "e-1", "alice", "s-1", "p-1", "secret", "Alice"] {
            assert!(!text.contains(original), "{original} survived: {text}");
        }
        assert_eq!(out.get_str("type").unwrap(), "presentation.viewed");
        let payload = out.get_document("payload").unwrap();
        assert_eq!(payload.get_str("device").unwrap(), "mobile");
        // A value of the wrong type stays as it is: the copy keeps its dirt.
        assert_eq!(payload.get_str("slide").unwrap(), "3");
        assert_eq!(out.get_document("note").unwrap().get_i32("n").unwrap(), 5);
        assert_eq!(
            out.get_datetime("ts").unwrap().timestamp_millis(),
            1_700_000_000_000 + 2 * DAY_MS
        );
        assert_eq!(a.day("2024-02-28"), "2024-03-01");
    }

    #[test]
    fn minted_ids_keep_their_order_and_time() {
        let early = ObjectId::parse_str("65a000000000000000000009").unwrap();
        let same_second = ObjectId::parse_str("65a0000000ffffffffffff01").unwrap();
        let later = ObjectId::parse_str("65a000010000000000000000").unwrap();
        let m = |o, r| mint(o, r, 1);
        assert!(m(early, 0) < m(same_second, 1) && m(same_second, 1) < m(later, 2));
        assert_eq!(
            m(early, 0).timestamp().timestamp_millis(),
            early.timestamp().timestamp_millis() + 86_400_000
        );
        assert!(!m(early, 0).to_hex().ends_with("0000000009") || m(early, 0) != early);
        assert_eq!(
            shift(later, -1).timestamp().timestamp_millis(),
            later.timestamp().timestamp_millis() - 86_400_000
        );
    }
}
