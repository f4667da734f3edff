/** The balancer's Prometheus metrics, fed by the proxy, the pool and reloads. */
import { Counter, Gauge, Histogram, Registry } from "./metrics.ts";
import type { Backend, BackendState, Pool } from "./pool.ts";
import type { ProxyObserver, RequestRecord } from "./proxy.ts";
import type { UpstreamError } from "./upstream/errors.ts";

const METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"];
/** Method label index; other methods count as "OTHER" (index METHODS.length). */
const METHOD_INDEX = new Map(METHODS.map((m, i) => [m, i]));
const STATES: BackendState[] = ["up", "down", "ejected", "draining", "disabled"];

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
  readonly ejections: Counter;
  readonly reloads: Counter;
  readonly startedAt = Date.now();
  /** Open client connections on the traffic port; the balancer plugs in its listener's count. */
  clientConnections: () => number = () => 0;
  readonly #series = new Map<string, {
    duration: { observe(value: number): void };
    upstream: { observe(value: number): void };
    requests: Map<number, { value: number }>;
  }>();

  constructor(readonly pool: Pool, readonly configVersion: () => number) {
    const r = this.registry;
    this.requests = r.add(
      new Counter("sluice_requests_total", "Client requests by backend, method and status code.", [
        "backend",
        "method",
        "code",
      ]),
    );
    this.duration = r.add(
      new Histogram("sluice_request_duration_seconds", "Whole client request duration.", [
        "backend",
      ]),
    );
    this.upstreamDuration = r.add(
      new Histogram(
        "sluice_upstream_response_seconds",
        "Time from sending a request upstream to its response head.",
        ["backend"],
      ),
    );
    this.connectErrors = r.add(
      new Counter(
        "sluice_upstream_connect_errors_total",
        "Failed connection attempts to backends.",
        ["backend"],
      ),
    );
    this.timeouts = r.add(
      new Counter("sluice_upstream_timeouts_total", "Upstream response timeouts.", ["backend"]),
    );
    this.upstreamErrors = r.add(
      new Counter(
        "sluice_upstream_errors_total",
        "Upstream failures by kind (connect, reset, timeout, protocol).",
        ["backend", "kind"],
      ),
    );
    this.retries = r.add(
      new Counter("sluice_retries_total", "Retries, by the backend retried on.", ["backend"]),
    );
    this.ejections = r.add(
      new Counter("sluice_ejections_total", "Outlier ejections.", ["backend"]),
    );
    this.reloads = r.add(
      new Counter("sluice_config_reloads_total", "Configuration reloads by outcome.", [
        "outcome",
      ]),
    );
    // Series that exist from the start, so rate() and alerts see 0 rather than nothing.
    this.reloads.inc(["success"], 0);
    this.reloads.inc(["failure"], 0);
    r.add(
      new Gauge(
        "sluice_backend_up",
        "1 if the backend takes new requests, else 0.",
        ["backend"],
        () => this.pool.backends.map((b) => [[b.id], b.available ? 1 : 0] as const),
      ),
    );
    r.add(
      new Gauge(
        "sluice_backend_state",
        "1 for the backend's current state (up, down, ejected, draining, disabled).",
        ["backend", "state"],
        () =>
          this.pool.backends.flatMap((b) =>
            STATES.map((s) => [[b.id, s], b.state === s ? 1 : 0] as const)
          ),
      ),
    );
    r.add(
      new Gauge(
        "sluice_backend_inflight_requests",
        "Requests being proxied to the backend now.",
        ["backend"],
        () => this.pool.backends.map((b) => [[b.id], b.inflight] as const),
      ),
    );
    r.add(
      new Gauge(
        "sluice_backend_weight",
        "Configured weight of the backend.",
        ["backend"],
        () => this.pool.backends.map((b) => [[b.id], b.weight] as const),
      ),
    );
    r.add(
      new Gauge(
        "sluice_backend_effective_weight",
        "Weight used for selection now (lower during slow start).",
        ["backend"],
        () => this.pool.backends.map((b) => [[b.id], this.pool.effectiveWeight(b)] as const),
      ),
    );
    r.add(
      new Gauge(
        "sluice_upstream_connections",
        "Open connections to the backend (idle and busy).",
        ["backend"],
        () => this.pool.backends.map((b) => [[b.id], b.connections.open] as const),
      ),
    );
    r.add(
      new Gauge(
        "sluice_client_connections",
        "Open client connections on the traffic port.",
        [],
        () => [[[], this.clientConnections()] as const],
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

  /** ProxyObserver: a request finished. */
  request(r: RequestRecord): void {
    const backend = r.backend?.id ?? "";
    // Series are cached per backend and method+status, so a request costs no label arrays.
    let series = this.#series.get(backend);
    if (!series) {
      series = {
        duration: this.duration.series([backend]),
        upstream: this.upstreamDuration.series([backend]),
        requests: new Map(),
      };
      this.#series.set(backend, series);
    }
    const index = METHOD_INDEX.get(r.method) ?? METHODS.length;
    const key = r.status * 16 + index;
    let count = series.requests.get(key);
    if (!count) {
      count = this.requests.cell([backend, METHODS[index] ?? "OTHER", String(r.status)]);
      series.requests.set(key, count);
    }
    count.value++;
    series.duration.observe(r.durationMs / 1000);
    if (r.backend && r.answered) {
      series.upstream.observe(r.upstreamMs / 1000);
      r.backend.responses[r.error ? 0 : Math.floor(r.status / 100)]++;
    }
  }

  /** ProxyObserver: an upstream attempt failed. */
  upstreamError(backend: Backend, error: UpstreamError): void {
    this.upstreamErrors.inc([backend.id, error.kind]);
    if (error.kind === "connect") this.connectErrors.inc([backend.id]);
    if (error.kind === "timeout") this.timeouts.inc([backend.id]);
    backend.responses[0]++;
  }

  /** ProxyObserver: a retry was sent to `backend`. */
  retry(backend: Backend): void {
    this.retries.inc([backend.id]);
  }

  /** Prometheus exposition text. */
  render(): string {
    for (const b of this.pool.backends) {
      const id = [b.id];
      this.retries.inc(id, 0);
      this.ejections.inc(id, 0);
      this.connectErrors.inc(id, 0);
      this.timeouts.inc(id, 0);
    }
    return this.registry.render();
  }
}
