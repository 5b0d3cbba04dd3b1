// Smoke: a few seconds of mixed traffic with strict thresholds; run by .ci/run
// through loadtest/run-smoke.sh. Knobs: BASE_URL, API_KEY, VUS (4), DURATION (5s),
// TENANTS, P99_MS (budget; debug builds are ~10x slower than release).
import { iteration } from './lib.js';

export const options = {
  scenarios: {
    smoke: {
      executor: 'constant-vus',
      vus: parseInt(__ENV.VUS || '4', 10),
      duration: __ENV.DURATION || '5s',
    },
  },
  thresholds: {
    http_req_failed: ['rate==0'],
    checks: ['rate==1'],
    'http_req_duration{name:webhook}': [`p(99)<${__ENV.P99_MS || '100'}`],
  },
};

export default iteration;
