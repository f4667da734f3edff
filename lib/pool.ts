/** The backend pool: each backend's identity, state and live counters, owned in one place. */
import { type BackendConfig, backendId } from "./config.ts";
import { hash32 } from "./hash.ts";
import { ConnectionPool } from "./upstream/connection_pool.ts";

/** How fast remembered latency fades (ms): a slow backend that recovers is tried again within seconds. */
export const EWMA_DECAY = 5_000;

/** What a backend is doing now. Only `up` backends receive new requests. */
export type BackendState = "up" | "down" | "ejected" | "draining" | "disabled";

/** The outcome of the latest active health probe. */
export interface ProbeResult {
  ok: boolean;
  /** The status code, when the backend answered. */
  status?: number;
  /** Why the probe failed. */
  error?: string;
  /** When the probe finished (ms since epoch). */
  time: number;
  /** How long the probe took (ms). */
  durationMs: number;
}

/** Options shared by every backend of a pool. */
export interface BackendOptions {
  /** Default concurrent-request limit (Infinity for none). */
  maxConnections: number;
  /** How long an unused upstream keep-alive connection is kept (ms). */
  idleTimeout: number;
  /** Connect timeout (ms). */
  connectTimeout: number;
}

/** One upstream server and everything the balancer knows about it. */
export class Backend {
  readonly id: string;
  readonly url: string;
  readonly hostname: string;
  readonly port: number;
  readonly tls: boolean;
  /** host:port as a Host header names it, for clients that sent no Host. */
  readonly authority: string;
  /** The sticky-session cookie value naming this backend: its name, or an opaque hash (never its address). */
  readonly cookie: string;
  weight: number;
  maxConnections: number;
  /** Keep-alive connections to this backend. */
  readonly connections: ConnectionPool;

  /** Verdict of the active health check. */
  healthy = true;
  /** Set by passive outlier detection; the ejection ends at this time (ms since epoch). */
  ejectedUntil = 0;
  /** How many times the backend has been ejected (ejection time grows with it). */
  ejections = 0;
  /** Operator's choice, through the admin API. */
  admin: "enabled" | "draining" | "disabled" = "enabled";
  /** Derived state, kept current by {@linkcode Backend.refresh}. */
  state: BackendState = "up";
  /** Why the backend is in its state. */
  reason = "starting";
  /** When the state last changed (ms since epoch). */
  since = Date.now();
  /** When the backend last became available, for slow start (ms since epoch). */
  upSince = 0;
  /** True when the backend may receive new requests (state `up`). */
  available = true;

  /** Requests being proxied to this backend now. */
  inflight = 0;
  /** Completed responses by status class: index 1..5 for 1xx..5xx, 0 for failures without a response. */
  readonly responses = [0, 0, 0, 0, 0, 0];
  /** Peak-EWMA latency in ms (0 until the first response). */
  ewma = 0;
  ewmaStamp = 0;
  /** Consecutive failures seen by passive health checking. */
  consecutiveFailures = 0;
  /** Latest active probe. */
  lastProbe: ProbeResult | undefined;
  /** Resolves when in-flight requests reach zero after a drain. */
  onIdle: (() => void) | undefined;

  constructor(config: BackendConfig, options: BackendOptions) {
    const url = new URL(config.url);
    this.id = backendId(config);
    this.url = config.url;
    this.tls = url.protocol === "https:";
    this.hostname = url.hostname.replace(/^\[|\]$/g, "");
    this.port = Number(url.port) || (this.tls ? 443 : 80);
    this.authority = url.host;
    this.cookie = config.name ?? hash32(config.url).toString(16).padStart(8, "0");
    this.weight = config.weight;
    this.maxConnections = config.maxConnections ?? options.maxConnections;
    this.connections = new ConnectionPool(this.hostname, this.port, this.tls, options);
  }

  /** Recomputes `state` from health, ejection and the operator's choice; returns true if it changed. */
  refresh(reason: string, now = Date.now()): boolean {
    const state: BackendState = this.admin === "disabled"
      ? "disabled"
      : this.admin === "draining"
      ? "draining"
      : !this.healthy
      ? "down"
      : this.ejectedUntil > now
      ? "ejected"
      : "up";
    if (state === this.state) return false;
    const wasAvailable = this.available;
    this.state = state;
    this.reason = reason;
    this.since = now;
    this.available = state === "up";
    if (this.available && !wasAvailable) this.upSince = now;
    if (state === "disabled" || state === "down") this.connections.closeIdle();
    return true;
  }

  /** Whether another request would exceed `maxConnections`. */
  get full(): boolean {
    return this.inflight >= this.maxConnections;
  }

  /** Counts a request in. */
  acquire(): void {
    this.inflight++;
  }

  /** Counts a request out, settling a pending drain. */
  release(): void {
    if (--this.inflight === 0 && this.onIdle) {
      const done = this.onIdle;
      this.onIdle = undefined;
      done();
    }
  }

  /** Records a response's latency (ms) into the peak-EWMA estimate. */
  observeLatency(ms: number, now = Date.now()): void {
    if (this.ewma === 0 || ms > this.ewma) {
      this.ewma = ms; // peak-sensitive: a slow response is believed at once
    } else {
      const weight = Math.exp(-(now - this.ewmaStamp) / EWMA_DECAY);
      this.ewma = this.ewma * weight + ms * (1 - weight);
    }
    this.ewmaStamp = now;
  }

  /** A compact description for logs. */
  toString(): string {
    return this.url;
  }
}

/**
 * The set of backends. `backends` is replaced, never mutated, so a request that
 * took a snapshot keeps a consistent view while the set changes.
 */
export class Pool {
  backends: readonly Backend[] = [];
  /** Bumped on every change to the set or a backend's state. */
  version = 0;
  /** Milliseconds over which a recovered backend ramps up to full weight (0: off). */
  slowStart = 0;
  readonly #listeners = new Set<(backend: Backend, previous: BackendState) => void>();

  constructor(readonly options: BackendOptions) {}

  /** Looks a backend up by id. */
  get(id: string): Backend | undefined {
    return this.backends.find((b) => b.id === id);
  }

  /** Adds a backend built from its config entry; throws if the id is taken. */
  add(config: BackendConfig): Backend {
    const backend = new Backend(config, this.options);
    if (this.get(backend.id)) throw new Error(`backend ${backend.id} already exists`);
    backend.upSince = Date.now();
    this.backends = [...this.backends, backend];
    this.version++;
    return backend;
  }

  /** Removes a backend from rotation at once; its in-flight requests finish on their own. */
  remove(id: string): Backend | undefined {
    const backend = this.get(id);
    if (!backend) return undefined;
    this.backends = this.backends.filter((b) => b !== backend);
    backend.connections.closeIdle();
    backend.connections.retire();
    this.version++;
    return backend;
  }

  /** Sets a backend's fields and recomputes its state, notifying listeners of a change. */
  update(backend: Backend, reason: string, now = Date.now()): void {
    const previous = backend.state;
    if (backend.refresh(reason, now)) {
      this.version++;
      for (const listener of this.#listeners) listener(backend, previous);
    }
  }

  /** Subscribes to state changes; returns the unsubscribe function. */
  onChange(listener: (backend: Backend, previous: BackendState) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /** The weight selection should use now, ramped during slow start. */
  effectiveWeight(backend: Backend, now = Date.now()): number {
    if (this.slowStart <= 0 || backend.weight === 0) return backend.weight;
    const elapsed = now - backend.upSince;
    if (elapsed >= this.slowStart) return backend.weight;
    return backend.weight * Math.max(0.05, elapsed / this.slowStart);
  }

  /** Closes every idle upstream connection (shutdown). */
  close(): void {
    for (const b of this.backends) {
      b.connections.closeIdle();
      b.connections.retire();
    }
  }
}
