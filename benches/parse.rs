//! Parse-side benches: the router's simd-json path (reusable tape, padded copy)
//! against simd-json's plain serde path and serde_json, per real WAHA fixture
//! and on a compact ~1.5 KB body like the load tests send; plus deep-link
//! extraction and sender normalisation.
//!
//! All three parsers fill the same sparse borrowed struct (the `webhook` field
//! types) and feed `route::classify`, so they compare like for like. The
//! figures are quoted in README ("Performance").

use std::cell::RefCell;
use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use serde::Deserialize;
use whatsapp_router::deeplink::find_tenant_link;
use whatsapp_router::route::{classify, Plan};
use whatsapp_router::sender::parse_jid;
use whatsapp_router::webhook::{with_envelope, Envelope, LObj, LStr, Me, Payload};

const PREFIX: &str = "start_realty_";

/// The router's envelope, rebuilt here because `webhook::RawEnvelope` is private.
#[derive(Deserialize)]
struct Raw<'a> {
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

fn plan_of(raw: Raw<'_>) -> Option<Plan> {
    let envelope = Envelope {
        id: raw.id.0,
        event: raw.event.0?,
        session: raw.session.0,
        me: raw.me.0.unwrap_or_default(),
        payload: raw.payload.0?,
    };
    Some(classify(&envelope, PREFIX))
}

fn serde_json_plan(body: &[u8]) -> Option<Plan> {
    plan_of(serde_json::from_slice::<Raw<'_>>(body).ok()?)
}

thread_local! {
    /// The router's previous path: a scratch copy, then `from_slice_with_buffers`
    /// (which pads into a second copy and allocates a tape per parse).
    static OLD: RefCell<(Vec<u8>, simd_json::Buffers)> =
        RefCell::new((Vec::with_capacity(16 * 1024), simd_json::Buffers::default()));
}

fn simd_buffers_plan(body: &[u8]) -> Option<Plan> {
    OLD.with(|cell| {
        let mut cell = cell.borrow_mut();
        let (buf, buffers) = &mut *cell;
        buf.clear();
        buf.extend_from_slice(body);
        simd_json::serde::from_slice_with_buffers::<Raw<'_>>(buf, buffers).ok().and_then(plan_of)
    })
}

fn router_plan(body: &[u8]) -> Option<Plan> {
    with_envelope(body, |e| classify(e, PREFIX)).ok()
}

fn fixtures() -> Vec<(String, Vec<u8>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/fixtures/waha");
    let mut out = Vec::new();
    for dir in [root.clone(), root.join("derived")] {
        let mut entries: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
        entries.sort();
        for path in entries.into_iter().filter(|p| p.extension().is_some_and(|e| e == "json")) {
            let name = path.strip_prefix(&root).unwrap().display().to_string();
            out.push((name, std::fs::read(&path).unwrap()));
        }
    }
    // The fixtures are pretty-printed; WAHA sends compact JSON. One of each size
    // class, compacted, shows whether whitespace skews the comparison.
    for name in ["message.text.json", "derived/deeplink_first_message.cus.json"] {
        let value: serde_json::Value = serde_json::from_slice(&std::fs::read(root.join(name)).unwrap()).unwrap();
        out.push((format!("compact/{name}"), value.to_string().into_bytes()));
    }
    out
}

fn parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("parse");
    for (name, body) in fixtures() {
        // The three must agree, or the comparison means nothing.
        let expected = router_plan(&body);
        assert_eq!(serde_json_plan(&body), expected, "{name}");
        assert_eq!(simd_buffers_plan(&body), expected, "{name}");
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_with_input(BenchmarkId::new("router_simd_json_tape", &name), &body, |b, body| {
            b.iter(|| router_plan(black_box(body)))
        });
        group.bench_with_input(BenchmarkId::new("simd_json_from_slice", &name), &body, |b, body| {
            b.iter(|| simd_buffers_plan(black_box(body)))
        });
        group.bench_with_input(BenchmarkId::new("serde_json_sparse", &name), &body, |b, body| {
            b.iter(|| serde_json_plan(black_box(body)))
        });
    }
    group.finish();
}

fn deeplink(c: &mut Criterion) {
    let mut group = c.benchmark_group("deeplink");
    let cases = [
        ("bare", "start_realty_1234"),
        ("in_sentence", "Hello! I saw your ad, START_REALTY_1234 please call me back"),
        ("absent_300b", &"no link in this message, just a long question about flats. ".repeat(5)[..]),
    ];
    for (name, text) in cases {
        group.bench_with_input(BenchmarkId::from_parameter(name), text, |b, text| {
            b.iter(|| find_tenant_link(black_box(text), PREFIX))
        });
    }
    group.finish();
}

fn sender(c: &mut Criterion) {
    let mut group = c.benchmark_group("sender");
    for jid in ["971509876543@c.us", "971509876543:31@s.whatsapp.net", "46391351543557@lid", "120363@g.us"] {
        group.bench_with_input(BenchmarkId::from_parameter(jid), jid, |b, jid| b.iter(|| parse_jid(black_box(jid))));
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(1));
    targets = parse, deeplink, sender
}
criterion_main!(benches);
