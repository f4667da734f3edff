/**
 * The balancer's Prometheus metrics. Traffic counters are fed by the request path of each
 * worker and can be dumped and merged, so `/metrics` reports the whole balancer; gauges are
 * read from the pools, which the control plane owns.
 */
import { Counter, Gauge, Histogram, Registry } from "./metrics.ts";
import type { Backend, BackendState, Pool } from "./pool.ts";
import type { ProxyObserver, RequestRecord } from "./proxy.ts";
import type { UpstreamError } from "./upstream/errors.ts";

const METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"];
const PROTOCOLS = ["HTTP/1.1", "HTTP/1.0", "HTTP/2"];
const STATES: BackendState[] = ["up", "down", "ejected", "draining", "disabled"];

/** Per-backend response counts: index 1..5 for 1xx..5xx, 0 for failures without a response. */
export type ResponseCounts = [number, number, number, number, number, number];

/** A backend's key in dumps and views: pool and id. */
export function backendKey(pool: string, id: string): string {
  return pool + "\u0000" + id;
}

/** Counts that a worker sends to the control plane, to be summed. */
export interface TrafficDump {
  counters: Record<string, [string[], number][]>;
  histograms: Record<string, [string[], number[], number][]>;
  responses: [string, number[]][];
  /** Gauges that are per worker and summed: client connections, upstream connections, tunnels. */
  gauges: Record<string, [string[], number][]>;
  /** The worker thread's index. */
  worker: number;
}

interface Series {
  duration: { observe(value: number): void };
  upstream: { observe(value: number): void };
  requests: Map<number, { value: number }>;
  /** The backend's response counts, found once (the map is keyed by a joined string). */
  responses: ResponseCounts | undefined;
}

/** Metric families and the observer that feeds them. */
export class Stats implements ProxyObserver {
  readonly registry = new Registry();
  readonly requests: Counter;
  readonly duration: Histogram;
  readonly upstreamDuration: Histogram;
  readonly connectErrors: Counter;
  readonly timeouts: Counter;
  readonly upstreamErrors: Counter;
  readonly retries: Counter;
  readonly retriesRefused: Counter;
  readonly ejections: Counter;
  readonly reloads: Counter;
  readonly discoveryErrors: Counter;
  readonly tunnels: Counter;
  readonly workerCrashes: Counter;
  readonly startedAt = Date.now();
  /** Open client connections; the balancer plugs in its listeners' count (summed over workers). */
  clientConnections: () => number = () => 0;
  /** Open tunnels (upgraded connections). */
  tunnelsOpen: () => number = () => 0;
  /** Responses by class per backend key (see {@linkcode backendKey}). */
  readonly responses = new Map<string, ResponseCounts>();
  /** Sums of other workers' per-worker gauges, set when merging. */
  #merged: TrafficDump["gauges"] | undefined;
  /** Client connections of each worker thread, set when merging. */
  #byWorker: [number, number][] | undefined;
  /** This thread's worker index (0 on the main thread). */
  worker = 0;
  readonly #series = new Map<Backend | string, Map<string, Series>>();

  constructor(
    readonly pools: () => readonly Pool[],
    readonly configVersion: () => number,
  ) {
    const r = this.registry;
    this.requests = r.add(
      new Counter(
        "sluice_requests_total",
        "Client requests by pool, route, backend, method, status code and protocol.",
        ["pool", "route", "backend", "method", "code", "protocol"],
      ),
    );
    this.duration = r.add(
      new Histogram("sluice_request_duration_seconds", "Whole client request duration.", [
        "pool",
        "route",
        "backend",
      ]),
    );
    this.upstreamDuration = r.add(
      new Histogram(
        "sluice_upstream_response_seconds",
        "Time from sending a request upstream to its response head.",
        ["pool", "backend"],
      ),
    );
    this.connectErrors = r.add(
      new Counter(
        "sluice_upstream_connect_errors_total",
        "Failed connection attempts to backends.",
        ["pool", "backend"],
      ),
    );
    this.timeouts = r.add(
      new Counter("sluice_upstream_timeouts_total", "Upstream response timeouts.", [
        "pool",
        "backend",
      ]),
    );
    this.upstreamErrors = r.add(
      new Counter(
        "sluice_upstream_errors_total",
        "Upstream failures by kind (connect, reset, timeout, protocol).",
        ["pool", "backend", "kind"],
      ),
    );
    this.retries = r.add(
      new Counter("sluice_retries_total", "Retries, by the backend retried on.", [
        "pool",
        "backend",
      ]),
    );
    this.retriesRefused = r.add(
      new Counter(
        "sluice_retries_refused_total",
        "Retries the retry budget refused.",
        ["pool"],
      ),
    );
    this.ejections = r.add(
      new Counter("sluice_ejections_total", "Outlier ejections.", ["pool", "backend"]),
    );
    this.reloads = r.add(
      new Counter("sluice_config_reloads_total", "Configuration reloads by outcome.", [
        "outcome",
      ]),
    );
    this.discoveryErrors = r.add(
      new Counter(
        "sluice_discovery_errors_total",
        "Failed DNS lookups of backend names (the last good answer is kept).",
        ["pool", "name"],
      ),
    );
    this.tunnels = r.add(
      new Counter("sluice_tunnels_total", "Upgraded connections (WebSocket and others) opened.", [
        "pool",
        "backend",
      ]),
    );
    this.workerCrashes = r.add(
      new Counter(
        "sluice_worker_crashes_total",
        "Worker threads that crashed (each is restarted).",
        ["worker"],
      ),
    );
    // Series that exist from the start, so rate() and alerts see 0 rather than nothing.
    this.reloads.inc(["success"], 0);
    this.reloads.inc(["failure"], 0);
    const each = <T>(fn: (p: Pool, b: Backend) => T) =>
      this.pools().flatMap((p) => p.backends.map((b) => fn(p, b)));
    r.add(
      new Gauge(
        "sluice_backend_up",
        "1 if the backend takes new requests, else 0.",
        ["pool", "backend"],
        () => each((p, b) => [[p.name, b.id], b.available ? 1 : 0] as const),
      ),
    );
    r.add(
      new Gauge(
        "sluice_backend_state",
        "1 for the backend's current state (up, down, ejected, draining, disabled).",
        ["pool", "backend", "state"],
        () =>
          each((p, b) => STATES.map((s) => [[p.name, b.id, s], b.state === s ? 1 : 0] as const))
            .flat(),
      ),
    );
    r.add(
      new Gauge(
        "sluice_backend_inflight_requests",
        "Requests being proxied to the backend now, by every worker.",
        ["pool", "backend"],
        () => each((p, b) => [[p.name, b.id], b.inflight] as const),
      ),
    );
    r.add(
      new Gauge(
        "sluice_backend_weight",
        "Configured weight of the backend.",
        ["pool", "backend"],
        () => each((p, b) => [[p.name, b.id], b.weight] as const),
      ),
    );
    r.add(
      new Gauge(
        "sluice_backend_effective_weight",
        "Weight used for selection now (lower during slow start).",
        ["pool", "backend"],
        () => each((p, b) => [[p.name, b.id], p.effectiveWeight(b)] as const),
      ),
    );
    r.add(
      new Gauge(
        "sluice_upstream_connections",
        "Open connections to the backend (idle and busy), over every worker.",
        ["pool", "backend"],
        () => this.#perWorker("sluice_upstream_connections", this.#upstreamConnections()),
      ),
    );
    r.add(
      new Gauge(
        "sluice_client_connections",
        "Open client connections on the traffic listeners.",
        [],
        () => this.#perWorker("sluice_client_connections", [[[], this.clientConnections()]]),
      ),
    );
    r.add(
      new Gauge(
        "sluice_worker_client_connections",
        "Open client connections per worker thread (how evenly the kernel spreads them).",
        ["worker"],
        () =>
          (this.#byWorker ?? [[this.worker, this.clientConnections()]]).map((
            [w, n],
          ) => [[String(w)], n] as const),
      ),
    );
    r.add(
      new Gauge(
        "sluice_tunnels_open",
        "Upgraded connections (WebSocket and others) open now.",
        [],
        () => this.#perWorker("sluice_tunnels_open", [[[], this.tunnelsOpen()]]),
      ),
    );
    r.add(
      new Gauge(
        "sluice_config_version",
        "Version of the configuration in force (1 at start, +1 per applied reload).",
        [],
        () => [[[], this.configVersion()] as const],
      ),
    );
    r.add(
      new Gauge(
        "sluice_start_time_seconds",
        "Start time of the process since the Unix epoch.",
        [],
        () => [[[], this.startedAt / 1000] as const],
      ),
    );
  }

  /** ProxyObserver: a backend accepted an upgrade and a tunnel opens. */
  tunnel(r: RequestRecord): void {
    this.tunnels.inc([r.pool, r.backend?.id ?? ""]);
  }

  /** ProxyObserver: a request finished. */
  request(r: RequestRecord): void {
    // Series are cached per backend (or pool) and route, so a request costs no label arrays.
    const b = r.backend;
    const key = b ?? r.pool;
    let byRoute = this.#series.get(key);
    if (!byRoute) this.#series.set(key, byRoute = new Map());
    let series = byRoute.get(r.route);
    const backend = b?.id ?? "";
    if (!series) {
      series = {
        duration: this.duration.series([r.pool, r.route, backend]),
        upstream: this.upstreamDuration.series([r.pool, backend]),
        requests: new Map(),
        responses: undefined,
      };
      byRoute.set(r.route, series);
    }
    // Other methods count as "OTHER" (index METHODS.length). A search, not a Map: the method is
    // a new string, which a Map would first have to hash.
    let method = METHODS.indexOf(r.method);
    if (method === -1) method = METHODS.length;
    let protocol = PROTOCOLS.indexOf(r.protocol);
    if (protocol === -1) protocol = 0;
    const code = (r.status * 16 + method) * 4 + protocol;
    let count = series.requests.get(code);
    if (!count) {
      count = this.requests.cell([
        r.pool,
        r.route,
        backend,
        METHODS[method] ?? "OTHER",
        String(r.status),
        PROTOCOLS[protocol],
      ]);
      series.requests.set(code, count);
    }
    count.value++;
    series.duration.observe(r.durationMs / 1000);
    if (b && r.answered) {
      series.upstream.observe(r.upstreamMs / 1000);
      series.responses ??= this.#responses(r.pool, b.id);
      series.responses[r.error ? 0 : Math.floor(r.status / 100)]++;
    }
  }

  /** ProxyObserver: an upstream attempt failed. */
  upstreamError(backend: Backend, error: UpstreamError): void {
    const pool = this.#poolOf(backend);
    this.upstreamErrors.inc([pool, backend.id, error.kind]);
    if (error.kind === "connect") this.connectErrors.inc([pool, backend.id]);
    if (error.kind === "timeout") this.timeouts.inc([pool, backend.id]);
    this.#responses(pool, backend.id)[0]++;
  }

  /** ProxyObserver: a retry was sent to `backend`. */
  retry(backend: Backend): void {
    this.retries.inc([this.#poolOf(backend), backend.id]);
  }

  /** ProxyObserver: the retry budget refused a retry. */
  retryRefused(pool: string): void {
    this.retriesRefused.inc([pool]);
  }

  /** A backend's response counts (zeros if it has none). */
  responsesOf(pool: string, id: string): ResponseCounts {
    return this.responses.get(backendKey(pool, id)) ?? [0, 0, 0, 0, 0, 0];
  }

  /** Prometheus exposition text. */
  render(): string {
    for (const p of this.pools()) {
      this.retriesRefused.inc([p.name], 0);
      for (const b of p.backends) {
        const id = [p.name, b.id];
        this.retries.inc(id, 0);
        this.ejections.inc(id, 0);
        this.connectErrors.inc(id, 0);
        this.timeouts.inc(id, 0);
      }
    }
    return this.registry.render();
  }

  /** This worker's traffic counts and per-worker gauges, to be merged by the control plane. */
  dump(): TrafficDump {
    return {
      counters: Object.fromEntries(
        this.#traffic().counters.map((c) => [c.name, c.dump()]),
      ),
      histograms: Object.fromEntries(
        this.#traffic().histograms.map((h) => [h.name, h.dump()]),
      ),
      responses: [...this.responses].map(([k, v]) => [k, [...v]]),
      gauges: {
        sluice_client_connections: [[[], this.clientConnections()]],
        sluice_tunnels_open: [[[], this.tunnelsOpen()]],
        sluice_upstream_connections: this.#upstreamConnections().map(([l, v]) => [[...l], v]),
      },
      worker: this.worker,
    };
  }

  /** Replaces this instance's traffic counts with the sum of `dumps` (the control plane's view). */
  setMerged(dumps: readonly TrafficDump[]): void {
    const { counters, histograms } = this.#traffic();
    for (const c of counters) {
      c.clear();
      for (const d of dumps) c.merge(d.counters[c.name] ?? []);
    }
    for (const h of histograms) {
      h.clear();
      for (const d of dumps) h.merge(d.histograms[h.name] ?? []);
    }
    this.responses.clear();
    for (const d of dumps) {
      for (const [k, v] of d.responses) {
        const mine = this.responses.get(k) ?? [0, 0, 0, 0, 0, 0];
        for (let i = 0; i < 6; i++) mine[i] += v[i];
        this.responses.set(k, mine);
      }
    }
    this.#series.clear();
    const gauges: TrafficDump["gauges"] = {};
    for (const d of dumps) {
      for (const [name, rows] of Object.entries(d.gauges)) {
        const sums = new Map<string, [string[], number]>();
        for (const row of gauges[name] ?? []) sums.set(row[0].join("\u0000"), row);
        for (const [labels, value] of rows) {
          const k = labels.join("\u0000");
          const row = sums.get(k);
          if (row) row[1] += value;
          else sums.set(k, [labels, value]);
        }
        gauges[name] = [...sums.values()];
      }
    }
    this.#merged = gauges;
    this.#byWorker = dumps.map((d) => [
      d.worker,
      d.gauges.sluice_client_connections?.[0]?.[1] ?? 0,
    ]);
  }

  #traffic() {
    return {
      counters: [
        this.requests,
        this.connectErrors,
        this.timeouts,
        this.upstreamErrors,
        this.retries,
        this.retriesRefused,
        this.tunnels,
      ],
      histograms: [this.duration, this.upstreamDuration],
    };
  }

  #perWorker(name: string, own: readonly (readonly [readonly string[], number])[]) {
    return this.#merged ? this.#merged[name] ?? [] : own;
  }

  #upstreamConnections(): [string[], number][] {
    return this.pools().flatMap((p) =>
      p.backends.map((b) =>
        [[p.name, b.id], b.hasConnections ? b.connections.open : 0] as [string[], number]
      )
    );
  }

  #responses(pool: string, id: string): ResponseCounts {
    const key = backendKey(pool, id);
    let counts = this.responses.get(key);
    if (!counts) this.responses.set(key, counts = [0, 0, 0, 0, 0, 0]);
    return counts;
  }

  #poolOf(backend: Backend): string {
    for (const p of this.pools()) if (p.backends.includes(backend)) return p.name;
    return "";
  }
}
