/**
 * `GET /metrics` in the Prometheus text exposition format (version 0.0.4): counters, gauges and
 * histograms with labels, no dependency.
 */

type Labels = Record<string, string>;

const labelText = (l: Labels) => {
  const keys = Object.keys(l);
  return keys.length === 0 ? '' : `{${keys.map((k) => `${k}="${l[k].replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n')}"`).join(',')}}`;
};

interface Family {
  name: string;
  help: string;
  type: 'counter' | 'gauge' | 'histogram';
  render(): string[];
}

export class Counter implements Family {
  readonly type = 'counter';
  private readonly values = new Map<string, { labels: Labels; value: number }>();
  constructor(
    readonly name: string,
    readonly help: string,
  ) {}
  inc(labels: Labels = {}, by = 1) {
    const key = labelText(labels);
    const v = this.values.get(key) ?? { labels, value: 0 };
    v.value += by;
    this.values.set(key, v);
  }
  get(labels: Labels = {}): number {
    return this.values.get(labelText(labels))?.value ?? 0;
  }
  render() {
    return [...this.values.values()].map((v) => `${this.name}${labelText(v.labels)} ${v.value}`);
  }
}

export class Gauge implements Family {
  readonly type = 'gauge';
  constructor(
    readonly name: string,
    readonly help: string,
    private readonly read: () => number,
  ) {}
  render() {
    return [`${this.name} ${this.read()}`];
  }
}

export class Histogram implements Family {
  readonly type = 'histogram';
  private readonly counts: number[];
  private sum = 0;
  private count = 0;
  constructor(
    readonly name: string,
    readonly help: string,
    private readonly buckets: number[],
  ) {
    this.counts = buckets.map(() => 0);
  }
  observe(v: number) {
    this.buckets.forEach((b, i) => {
      if (v <= b) this.counts[i]++;
    });
    this.sum += v;
    this.count++;
  }
  render() {
    return [
      ...this.buckets.map((b, i) => `${this.name}_bucket{le="${b}"} ${this.counts[i]}`),
      `${this.name}_bucket{le="+Inf"} ${this.count}`,
      `${this.name}_sum ${this.sum}`,
      `${this.name}_count ${this.count}`,
    ];
  }
}

export class Registry {
  private readonly families: Family[] = [];
  add<F extends Family>(f: F): F {
    this.families.push(f);
    return f;
  }
  render(): string {
    return `${this.families.flatMap((f) => [`# HELP ${f.name} ${f.help}`, `# TYPE ${f.name} ${f.type}`, ...f.render()]).join('\n')}\n`;
  }
}

const LATENCY_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];

/** The server's metrics; gauges read the server's live state. */
export function serverMetrics(live: { queueDepth: () => number; inFlight: () => number; workerUp: () => number; maxBatchRows: number }) {
  const r = new Registry();
  const batchRows = { last: 0 };
  return {
    registry: r,
    batchRows,
    requests: r.add(new Counter('adapterkit_requests_total', 'HTTP requests by route and status code')),
    tokens: r.add(new Counter('adapterkit_generated_tokens_total', 'tokens generated (all rows)')),
    steps: r.add(new Counter('adapterkit_decode_steps_total', 'decode steps run by the worker')),
    restarts: r.add(new Counter('adapterkit_worker_restarts_total', 'generation worker restarts after a backend failure')),
    latency: r.add(new Histogram('adapterkit_request_duration_seconds', 'time from request to full answer (generate)', LATENCY_BUCKETS)),
    firstToken: r.add(new Histogram('adapterkit_time_to_first_token_seconds', 'time from request to its first generated token', LATENCY_BUCKETS)),
    occupancy: r.add(new Histogram('adapterkit_batch_rows', 'rows per decode step (batch occupancy)', [1, 2, 4, 8, 16, 32, 64, 128, 256])),
    queue: r.add(new Gauge('adapterkit_queue_depth', 'requests waiting for the worker', live.queueDepth)),
    inFlight: r.add(new Gauge('adapterkit_requests_in_worker', 'requests the worker is generating', live.inFlight)),
    batchOccupancy: r.add(new Gauge('adapterkit_batch_occupancy_ratio', 'rows of the last decode step / max batch rows', () => batchRows.last / live.maxBatchRows)),
    workerUp: r.add(new Gauge('adapterkit_worker_up', '1 when the generation worker is ready', live.workerUp)),
  };
}
