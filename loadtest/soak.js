// Soak: a fixed arrival rate for a bounded time (default 10 min), to show
// memory and latency stay flat. Knobs: BASE_URL, API_KEY, RATE (req/s, 2000),
// VUS (pre-allocated, 64), DURATION (10m), P99_MS (25).
import { iteration, VUS } from './lib.js';

export const options = {
  scenarios: {
    soak: {
      executor: 'constant-arrival-rate',
      rate: parseInt(__ENV.RATE || '2000', 10),
      timeUnit: '1s',
      duration: __ENV.DURATION || '10m',
      preAllocatedVUs: VUS > 16 ? VUS : 64,
      maxVUs: 4 * (VUS > 16 ? VUS : 64),
    },
  },
  thresholds: {
    http_req_failed: ['rate==0'],
    checks: ['rate==1'],
    dropped_iterations: ['count==0'],
    'http_req_duration{name:webhook}': [`p(99)<${__ENV.P99_MS || '25'}`],
  },
};

export default iteration;
