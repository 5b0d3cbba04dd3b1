// Spike: a calm baseline, a sudden jump to VUS virtual users, back to calm.
// Nothing may fail during the spike; latency may rise. Knobs: BASE_URL, API_KEY,
// VUS (peak, 200), BASE_VUS (10), DURATION (length of the peak, 20s), P99_MS (100).
import { iteration, VUS } from './lib.js';

const base = parseInt(__ENV.BASE_VUS || '10', 10);

export const options = {
  scenarios: {
    spike: {
      executor: 'ramping-vus',
      startVUs: base,
      stages: [
        { duration: '10s', target: base },
        { duration: '2s', target: VUS > 16 ? VUS : 200 },
        { duration: __ENV.DURATION || '20s', target: VUS > 16 ? VUS : 200 },
        { duration: '2s', target: base },
        { duration: '10s', target: base },
      ],
      gracefulRampDown: '5s',
    },
  },
  thresholds: {
    http_req_failed: ['rate==0'],
    checks: ['rate==1'],
    'http_req_duration{name:webhook}': [`p(99)<${__ENV.P99_MS || '100'}`],
  },
};

export default iteration;
