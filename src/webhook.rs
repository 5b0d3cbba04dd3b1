//! The WAHA webhook envelope: just the fields routing needs, borrowed from the body.
//!
//! Every envelope field except `event` and `payload` may be missing, and WAHA's
//! engines put odd types in odd places (`_data` is the engine's raw message), so
//! each field is read leniently: a field of an unexpected type reads as absent
//! instead of failing the whole body. Only a body that is not a JSON object, or
//! lacks a string `event` or an object `payload`, is rejected.

use std::borrow::Cow;
use std::cell::RefCell;
use std::fmt;
use std::marker::PhantomData;

use serde::de::value::MapAccessDeserializer;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

/// Why a body could not be read as a webhook. Shown to the caller in a 400.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("body is not a valid JSON object: {0}")]
    Json(String),
    #[error("body has no string field `event`")]
    MissingEvent,
    #[error("body has no object field `payload`")]
    MissingPayload,
}

/// The envelope WAHA posts for every event.
#[derive(Debug)]
pub struct Envelope<'a> {
    pub id: Option<Cow<'a, str>>,
    pub event: Cow<'a, str>,
    pub session: Option<Cow<'a, str>>,
    pub me: Me<'a>,
    pub payload: Payload<'a>,
}

/// The session's own account, used to spot our own messages when an engine
/// mislabels them as `fromMe: false`.
#[derive(Debug, Default, Deserialize)]
pub struct Me<'a> {
    #[serde(borrow, default)]
    pub id: LStr<'a>,
    #[serde(borrow, default)]
    pub lid: LStr<'a>,
}

/// The routing-relevant part of `payload` for message and chat events.
#[derive(Debug, Default, Deserialize)]
pub struct Payload<'a> {
    /// `{fromMe}_{chatId}_{keyId}[_{participant}]`.
    #[serde(borrow, default)]
    pub id: LStr<'a>,
    #[serde(borrow, default)]
    pub from: LStr<'a>,
    #[serde(borrow, default)]
    pub to: LStr<'a>,
    #[serde(borrow, default)]
    pub participant: LStr<'a>,
    #[serde(rename = "fromMe", default)]
    pub from_me: LBool,
    #[serde(borrow, default)]
    pub body: LStr<'a>,
    /// Some engines put the phone form of a LID sender at the payload's top level.
    #[serde(rename = "senderPn", borrow, default)]
    pub sender_pn: LStr<'a>,
    /// The engine's raw message; only its alternative ids are read.
    #[serde(rename = "_data", borrow, default)]
    pub data: LObj<EngineData<'a>>,
}

/// NOWEB/Baileys `_data`: `key.remoteJidAlt` names the other form (phone or LID)
/// of the chat; older versions say `senderPn`.
#[derive(Debug, Default, Deserialize)]
pub struct EngineData<'a> {
    #[serde(borrow, default)]
    pub key: LObj<EngineKey<'a>>,
    #[serde(rename = "senderPn", borrow, default)]
    pub sender_pn: LStr<'a>,
}

#[derive(Debug, Default, Deserialize)]
pub struct EngineKey<'a> {
    #[serde(rename = "remoteJidAlt", borrow, default)]
    pub remote_jid_alt: LStr<'a>,
    #[serde(rename = "senderPn", borrow, default)]
    pub sender_pn: LStr<'a>,
}

impl<'a> Payload<'a> {
    /// Every alternative id the engine gave for the sender, in order of trust.
    pub fn alternative_ids(&self) -> impl Iterator<Item = &str> {
        let key = self.data.0.as_ref().and_then(|d| d.key.0.as_ref());
        [
            key.and_then(|k| k.remote_jid_alt.get()),
            key.and_then(|k| k.sender_pn.get()),
            self.data.0.as_ref().and_then(|d| d.sender_pn.get()),
            self.sender_pn.get(),
        ]
        .into_iter()
        .flatten()
    }
}

/// Per-thread parse state, reused by every parse on the thread.
struct Scratch {
    /// A padded copy of the body: simd-json parses in place, and the original
    /// bytes must be forwarded unchanged.
    input: Vec<u8>,
    buffers: simd_json::Buffers,
    /// The tape's allocation between parses (always empty here).
    tape: Option<simd_json::Tape<'static>>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch {
        input: Vec::with_capacity(16 * 1024),
        buffers: simd_json::Buffers::default(),
        tape: Some(simd_json::Tape::null()),
    });
}

/// Parses `body` and hands the borrowed envelope to `f`. The envelope borrows from
/// a thread-local copy, so it cannot outlive the call: take out what you need.
///
/// Uses simd-json's reusable-tape path (`fill_tape_padded`): the body is copied
/// once, into a buffer that already has simd-json's padding, and neither the
/// tape nor the buffers are allocated per request (benches/parse.rs).
pub fn with_envelope<R>(body: &[u8], f: impl FnOnce(&Envelope<'_>) -> R) -> Result<R, ParseError> {
    // serde would read a JSON array as a struct's fields in order; only an
    // object is an envelope.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ParseError::Json("expected a JSON object".into()));
    }
    SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        let Scratch { input, buffers, tape: slot } = &mut *scratch;
        input.clear();
        input.extend_from_slice(body);
        input.resize(body.len() + simd_json::INPUT_PADDING, b' ');
        let mut tape = slot.take().unwrap_or_else(simd_json::Tape::null).reset();
        let filled = simd_json::fill_tape_padded(input, body.len(), buffers, &mut tape);
        let mut de = simd_json::Deserializer::from_tape(tape);
        let result =
            filled.and_then(|()| RawEnvelope::deserialize(&mut de)).map_err(|e| ParseError::Json(e.to_string()));
        let result = result.and_then(|raw| {
            let envelope = Envelope {
                id: raw.id.0,
                event: raw.event.0.ok_or(ParseError::MissingEvent)?,
                session: raw.session.0,
                me: raw.me.0.unwrap_or_default(),
                payload: raw.payload.0.ok_or(ParseError::MissingPayload)?,
            };
            Ok(f(&envelope))
        });
        *slot = Some(de.into_tape().reset());
        result
    })
}

/// The envelope as read, before the required fields are checked.
#[derive(Deserialize)]
struct RawEnvelope<'a> {
    #[serde(borrow, default)]
    id: LStr<'a>,
    #[serde(borrow, default)]
    event: LStr<'a>,
    #[serde(borrow, default)]
    session: LStr<'a>,
    #[serde(borrow, default)]
    me: LObj<Me<'a>>,
    #[serde(borrow, default)]
    payload: LObj<Payload<'a>>,
}

/// A string field: present only if the JSON value is a string.
#[derive(Debug, Default)]
pub struct LStr<'a>(pub Option<Cow<'a, str>>);

impl LStr<'_> {
    pub fn get(&self) -> Option<&str> {
        self.0.as_deref()
    }
}

/// A boolean field: present only if the JSON value is `true` or `false`.
#[derive(Debug, Default, Clone, Copy)]
pub struct LBool(pub Option<bool>);

/// An object field: present only if the JSON value is an object.
#[derive(Debug)]
pub struct LObj<T>(pub Option<T>);

impl<T> Default for LObj<T> {
    fn default() -> Self {
        LObj(None)
    }
}

/// Consumes any JSON value and maps it to `Out`: the one visitor behind all the
/// lenient scalar field types. `scalar` decides what a value becomes; objects and
/// arrays are skipped and read as `Scalar::Other`.
struct AnyVisitor<'de, Out> {
    scalar: fn(Scalar<'de>) -> Out,
    _marker: PhantomData<&'de ()>,
}

enum Scalar<'de> {
    Str(Cow<'de, str>),
    Bool(bool),
    Other,
}

impl<'de, Out> Visitor<'de> for AnyVisitor<'de, Out> {
    type Value = Out;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Out, E> {
        Ok((self.scalar)(Scalar::Str(Cow::Borrowed(v))))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Out, E> {
        Ok((self.scalar)(Scalar::Str(Cow::Owned(v.to_owned()))))
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Out, E> {
        Ok((self.scalar)(Scalar::Bool(v)))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Out, E> {
        Ok((self.scalar)(Scalar::Other))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Out, E> {
        Ok((self.scalar)(Scalar::Other))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Out, E> {
        Ok((self.scalar)(Scalar::Other))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Out, E> {
        Ok((self.scalar)(Scalar::Other))
    }
    fn visit_none<E: de::Error>(self) -> Result<Out, E> {
        Ok((self.scalar)(Scalar::Other))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Out, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok((self.scalar)(Scalar::Other))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Out, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok((self.scalar)(Scalar::Other))
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for LStr<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let visitor = AnyVisitor {
            scalar: |s| match s {
                Scalar::Str(s) => LStr(Some(s)),
                _ => LStr(None),
            },
            _marker: PhantomData,
        };
        deserializer.deserialize_any(visitor)
    }
}

impl<'de> Deserialize<'de> for LBool {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let visitor = AnyVisitor {
            scalar: |s| match s {
                Scalar::Bool(b) => LBool(Some(b)),
                _ => LBool(None),
            },
            _marker: PhantomData,
        };
        deserializer.deserialize_any(visitor)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for LObj<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjVisitor<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for ObjVisitor<T> {
            type Value = LObj<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<LObj<T>, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map)).map(|t| LObj(Some(t)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<LObj<T>, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(LObj(None))
            }
            fn visit_borrowed_str<E: de::Error>(self, _: &'de str) -> Result<LObj<T>, E> {
                Ok(LObj(None))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<LObj<T>, E> {
                Ok(LObj(None))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<LObj<T>, E> {
                Ok(LObj(None))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<LObj<T>, E> {
                Ok(LObj(None))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<LObj<T>, E> {
                Ok(LObj(None))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<LObj<T>, E> {
                Ok(LObj(None))
            }
            fn visit_unit<E: de::Error>(self) -> Result<LObj<T>, E> {
                Ok(LObj(None))
            }
            fn visit_none<E: de::Error>(self) -> Result<LObj<T>, E> {
                Ok(LObj(None))
            }
        }
        deserializer.deserialize_any(ObjVisitor(PhantomData))
    }
}
