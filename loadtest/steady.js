// Steady state: 99% follow-ups of locked senders, 1% new senders with a deep
// link, spread over TENANTS tenants. Knobs: BASE_URL, API_KEY, VUS (16),
// DURATION (60s), TENANTS (1000), NEW_SENDER_RATIO (0.01), P99_MS (25: k6 itself
// takes most of a 2-vCPU box; tighten it where k6 runs elsewhere).
import { iteration, VUS } from './lib.js';

export const options = {
  scenarios: {
    steady: { executor: 'constant-vus', vus: VUS, duration: __ENV.DURATION || '60s' },
  },
  thresholds: {
    http_req_failed: ['rate==0'],
    checks: ['rate==1'],
    'http_req_duration{name:webhook}': [`p(99)<${__ENV.P99_MS || '25'}`],
  },
};

export default iteration;
