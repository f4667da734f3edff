/** Per-second request counts, errors and latency histograms for the last five minutes, per backend. */
import type { Backend } from "../pool.ts";
import type { ProxyObserver, RequestRecord } from "../proxy.ts";

/** Seconds of history kept. */
export const WINDOW_SECONDS = 300;
/** Latency buckets per second: quarter-octaves from 0.1 ms up to about 90 s. */
const BUCKETS = 80;
const BASE_MS = 0.1;
const SCALE = 4; // buckets per doubling: each is ~19% wide, so quantiles are within ~10%

/** One second of traffic. */
export interface Point {
  /** Second since the epoch (start of the bucket). */
  t: number;
  count: number;
  /** Requests answered with 5xx or failed. */
  errors: number;
  /** Latency quantiles in ms (0 without requests). */
  p50: number;
  p99: number;
}

/** Traffic over a span of seconds. */
export interface Summary {
  /** Requests per second. */
  rps: number;
  /** Share of requests (0..1) answered with 5xx or failed. */
  errorRate: number;
  p50: number;
  p99: number;
}

/** Columns of points, oldest first, for compact JSON. */
export interface Columns {
  /** Second (since the epoch) of the first point. */
  start: number;
  count: number[];
  errors: number[];
  p50: number[];
  p99: number[];
}

function bucketOf(ms: number): number {
  if (!(ms > BASE_MS)) return 0;
  const b = Math.ceil(Math.log2(ms / BASE_MS) * SCALE);
  return b < BUCKETS ? b : BUCKETS - 1;
}

/** A representative latency for a bucket: its geometric middle. */
function bucketValue(b: number): number {
  if (b === 0) return BASE_MS;
  if (b === BUCKETS - 1) return BASE_MS * 2 ** ((b - 1) / SCALE);
  return BASE_MS * 2 ** ((b - 0.5) / SCALE);
}

/** A ring of per-second buckets; slots are reused in place, so recording allocates nothing. */
export class Series {
  readonly #stamps = new Float64Array(WINDOW_SECONDS).fill(-1);
  readonly #counts = new Uint32Array(WINDOW_SECONDS);
  readonly #errors = new Uint32Array(WINDOW_SECONDS);
  readonly #hist = new Uint32Array(WINDOW_SECONDS * BUCKETS);

  /** Records one request that finished in second `sec`. */
  add(sec: number, ms: number, error: boolean): void {
    const i = sec % WINDOW_SECONDS;
    if (this.#stamps[i] !== sec) {
      this.#stamps[i] = sec;
      this.#counts[i] = 0;
      this.#errors[i] = 0;
      this.#hist.fill(0, i * BUCKETS, i * BUCKETS + BUCKETS);
    }
    this.#counts[i]++;
    if (error) this.#errors[i]++;
    this.#hist[i * BUCKETS + bucketOf(ms)]++;
  }

  /** The slot holding second `sec`, or -1 if it holds nothing for that second. */
  #slot(sec: number): number {
    const i = sec % WINDOW_SECONDS;
    return this.#stamps[i] === sec ? i : -1;
  }

  /** Requests, errors and latency quantiles over seconds [from, to]. */
  summary(from: number, to: number): Summary {
    let count = 0;
    let errors = 0;
    const slots: number[] = [];
    for (let sec = from; sec <= to; sec++) {
      const i = this.#slot(sec);
      if (i < 0 || this.#counts[i] === 0) continue;
      slots.push(i);
      count += this.#counts[i];
      errors += this.#errors[i];
    }
    const seconds = to - from + 1;
    return {
      rps: count / seconds,
      errorRate: count ? errors / count : 0,
      p50: this.#quantile(slots, count, 0.5),
      p99: this.#quantile(slots, count, 0.99),
    };
  }

  /** Per-second columns for seconds [from, to]. */
  columns(from: number, to: number): Columns {
    const out: Columns = { start: from, count: [], errors: [], p50: [], p99: [] };
    for (let sec = from; sec <= to; sec++) {
      const i = this.#slot(sec);
      const count = i < 0 ? 0 : this.#counts[i];
      out.count.push(count);
      out.errors.push(count ? this.#errors[i] : 0);
      out.p50.push(count ? this.#quantile([i], count, 0.5) : 0);
      out.p99.push(count ? this.#quantile([i], count, 0.99) : 0);
    }
    return out;
  }

  #quantile(slots: number[], count: number, q: number): number {
    if (count === 0) return 0;
    const rank = Math.max(1, Math.ceil(q * count));
    let seen = 0;
    for (let b = 0; b < BUCKETS; b++) {
      for (const i of slots) seen += this.#hist[i * BUCKETS + b];
      if (seen >= rank) return round(bucketValue(b));
    }
    return round(bucketValue(BUCKETS - 1));
  }
}

function round(ms: number): number {
  return Math.round(ms * 100) / 100;
}

/**
 * Keeps a {@linkcode Series} per backend (keyed `pool/id`) and one for all requests; register
 * it as a proxy observer.
 */
export class TimeSeries implements ProxyObserver {
  /** All client requests, including those no backend answered. */
  readonly total = new Series();
  readonly #byId = new Map<string, Series>();
  /**
   * The same series by backend object, for `request`: a `pool/id` string made per request
   * would be hashed anew for the lookup. Dropped whole when series are pruned.
   */
  #byBackend = new WeakMap<Backend, Series>();

  constructor(readonly now: () => number = Date.now) {}

  /** The series of a backend id, created on first use. */
  series(id: string): Series {
    let s = this.#byId.get(id);
    if (!s) {
      s = new Series();
      this.#byId.set(id, s);
    }
    return s;
  }

  /** Forgets series of backends that are gone. */
  prune(ids: ReadonlySet<string>): void {
    for (const id of this.#byId.keys()) if (!ids.has(id)) this.#byId.delete(id);
    this.#byBackend = new WeakMap();
  }

  /** The last complete second. */
  lastSecond(): number {
    return Math.floor(this.now() / 1000) - 1;
  }

  /** ProxyObserver: a request finished. */
  request(r: RequestRecord): void {
    const sec = Math.floor(this.now() / 1000);
    const error = r.status >= 500 || r.error !== undefined;
    this.total.add(sec, r.durationMs, error);
    const backend = r.backend;
    if (backend) {
      let s = this.#byBackend.get(backend);
      if (s === undefined) {
        s = this.series(`${r.pool}/${backend.id}`);
        this.#byBackend.set(backend, s);
      }
      s.add(sec, r.durationMs, error);
    }
  }

  /** ProxyObserver: failed attempts show in the backend's state and the metrics, not here. */
  upstreamError(): void {}

  /** ProxyObserver: retries are counted by the metrics. */
  retry(_backend: Backend): void {}
}
