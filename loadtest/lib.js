// Shared by the k6 scripts: env knobs, a WAHA-style ~1.5 KB message body, and
// one iteration of traffic (follow-ups of this VU's locked senders, some new
// senders with a deep link). Each VU owns its senders and sends a sender's
// messages one after another with `seq=1, 2, ...` in the text, so the load
// backend can check per-sender order and loss.
import http from 'k6/http';
import { check } from 'k6';
import { Counter } from 'k6/metrics';

export const BASE_URL = __ENV.BASE_URL || 'http://127.0.0.1:8000';
export const API_KEY = __ENV.API_KEY || '';
export const TENANTS = parseInt(__ENV.TENANTS || '1000', 10);
export const VUS = parseInt(__ENV.VUS || '16', 10);
export const DURATION = __ENV.DURATION || '30s';
// Share of messages from new senders (first contacts), 0..1.
export const NEW_SENDER_RATIO = parseFloat(__ENV.NEW_SENDER_RATIO || '0.01');
// Keeps runs against one data dir from reusing senders: pass a different value per run.
export const RUN_ID = parseInt(__ENV.RUN_ID || '0', 10);
// Senders a VU locks before it starts sending follow-ups.
const WARM_SENDERS = 5;

export const routed = new Counter('routed');
export const firstContacts = new Counter('first_contacts');

const GATEWAY = '971557357753@c.us';
const PAD = 'Lorem ipsum dolor sit amet, consectetur adipiscing elit. '.repeat(8);

export function messageBody(from, text, n) {
  // The router dedupes on the session plus this key id (as WhatsApp's are
  // random, they are unique): make it unique per run, VU and message.
  const key = `3EB0${RUN_ID.toString(16).padStart(2, '0')}${__VU.toString(16).padStart(4, '0')}${n.toString(16).padStart(10, '0')}`;
  const id = `false_${from}_${key.toUpperCase()}`;
  return JSON.stringify({
    id: `evt_01k${RUN_ID}_${__VU}_${n}`,
    timestamp: 1700000000000 + n,
    event: 'message',
    session: 'default',
    me: { id: GATEWAY, pushName: 'Realty gateway' },
    payload: {
      id, timestamp: 1700000000 + n, from, fromMe: false, source: 'app', to: GATEWAY,
      participant: null, body: text, hasMedia: false, media: null, ack: 1, ackName: 'SERVER',
      vCards: [],
      _data: {
        id: { fromMe: false, remote: from, id: id.split('_')[2], _serialized: id },
        type: 'chat', t: 1700000000 + n, notifyName: 'Client', from, to: GATEWAY, self: 'in',
        isNewMsg: true, star: false, recvFresh: true, broadcast: false, mentionedJidList: [],
        isForwarded: false, links: [], quotedContext: PAD,
      },
    },
    engine: 'WEBJS',
    environment: { version: '2024.10.1', engine: 'WEBJS', tier: 'PLUS', browser: '/usr/bin/chromium' },
  });
}

const params = { headers: { 'Content-Type': 'application/json', 'X-Api-Key': API_KEY }, tags: { name: 'webhook' } };

// Per-VU state (module scope is per VU in k6).
const senders = [];
let made = 0;
let sent = 0;

function newSender() {
  made += 1;
  // 97 + run (2 digits) + VU (4) + counter (5): unique per run, VU and sender.
  const digits = `97${String(RUN_ID % 100).padStart(2, '0')}${String(__VU % 10000).padStart(4, '0')}${String(made).padStart(5, '0')}`;
  const s = { from: `${digits}@c.us`, seq: 0, tenant: 1 + Math.floor(Math.random() * TENANTS) };
  senders.push(s);
  return s;
}

export function iteration() {
  const fresh = senders.length < WARM_SENDERS || Math.random() < NEW_SENDER_RATIO;
  const s = fresh ? newSender() : senders[Math.floor(Math.random() * senders.length)];
  s.seq += 1;
  sent += 1;
  const text = s.seq === 1 ? `Hi! start_realty_${s.tenant} seq=1` : `seq=${s.seq} is the flat still available?`;
  const res = http.post(`${BASE_URL}/api/gateway/waha`, messageBody(s.from, text, sent), params);
  const ok = check(res, {
    'status 200': (r) => r.status === 200,
    'routed to its tenant': (r) => r.status === 200 && r.json('status') === 'routed' && r.json('tenant_id') === s.tenant,
  });
  if (ok) {
    routed.add(1);
    if (s.seq === 1) firstContacts.add(1);
  }
}
