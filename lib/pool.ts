/**
 * Backends and the pool that owns their state. A `Backend`'s identity never changes; its
 * state (health, ejection, the operator's choice, weight) changes only through its `Pool`,
 * which recomputes the derived state and tells listeners. Counters that every worker must
 * share (in flight, consecutive failures, latency) live in shared memory.
 */
import type { BackendConfig, BackendTls } from "./config.ts";
import { hash32 } from "./hash.ts";
import { backendId } from "./net.ts";
import {
  B_EWMA,
  B_FAILURES,
  B_INFLIGHT,
  B_STAMP,
  backendFloatBase,
  backendIntBase,
  type SharedCounters,
} from "./shared.ts";
import { ConnectionPool } from "./upstream/connection_pool.ts";

/** How fast remembered latency fades (ms): a slow backend that recovers is tried again within seconds. */
export const EWMA_DECAY = 5_000;

/** What a backend is doing now. Only `up` backends receive new requests. */
export type BackendState = "up" | "down" | "ejected" | "draining" | "disabled";

/** The operator's choice for a backend. */
export type AdminState = "enabled" | "draining" | "disabled";

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

/** Options shared by every backend of a pool; a reload changes them in place. */
export interface BackendOptions {
  /** Default concurrent-request limit (Infinity for none). */
  maxConnections: number;
  /** How long an unused upstream keep-alive connection is kept (ms). */
  idleTimeout: number;
  /** Connect timeout (ms). */
  connectTimeout: number;
  /** TLS settings for https backends without their own. */
  tls?: BackendTls;
}

/** A backend's state fields, which only its pool writes. */
export interface BackendStatus {
  weight: number;
  maxConnections: number;
  /** Verdict of the active health check. */
  healthy: boolean;
  /** Set by passive outlier detection; the ejection ends at this time (ms since epoch). */
  ejectedUntil: number;
  /** How many times the backend has been ejected (ejection time grows with it). */
  ejections: number;
  admin: AdminState;
  state: BackendState;
  /** Why the backend is in its state. */
  reason: string;
  /** When the state last changed (ms since epoch). */
  since: number;
  /** When the backend last became available, for slow start (ms since epoch). */
  upSince: number;
  /** True when the backend may receive new requests (state `up`). */
  available: boolean;
  /** Latest active probe. */
  lastProbe: ProbeResult | undefined;
  /** SRV priority: only backends of the lowest priority that is available get traffic. */
  priority: number;
}

/** One upstream server: fixed identity, pool-owned state, shared counters. */
export class Backend implements Readonly<BackendStatus> {
  readonly id: string;
  readonly url: string;
  readonly hostname: string;
  readonly port: number;
  readonly tls: boolean;
  /** host:port as a Host header names it, for clients that sent no Host. */
  readonly authority: string;
  /** The sticky-session cookie value naming this backend: its name, or an opaque hash (never its address). */
  readonly cookie: string;
  /** The entry it was built from. */
  readonly config: BackendConfig;
  /** Where it came from: undefined for a configured url, `dns: NAME` for a discovered one. */
  readonly source: string | undefined;
  /** Its slot in the shared counters. */
  readonly slot: number;

  readonly weight: number;
  readonly maxConnections: number;
  readonly healthy: boolean = true;
  readonly ejectedUntil: number = 0;
  readonly ejections: number = 0;
  readonly admin: AdminState = "enabled";
  readonly state: BackendState = "up";
  readonly reason: string = "starting";
  readonly since: number = Date.now();
  readonly upSince: number = 0;
  readonly available: boolean = true;
  readonly lastProbe: ProbeResult | undefined;
  readonly priority: number = 0;

  readonly #ints: Int32Array;
  readonly #ledger: Int32Array | undefined;
  readonly #floats: Float64Array;
  readonly #i: number;
  readonly #f: number;
  readonly #options: BackendOptions;
  #connections: ConnectionPool | undefined;

  constructor(
    config: BackendConfig & { url: string },
    slot: number,
    counters: SharedCounters,
    options: BackendOptions,
    source?: string,
  ) {
    const url = new URL(config.url);
    this.id = backendId(config);
    this.url = config.url;
    this.config = config;
    this.source = source;
    this.tls = url.protocol === "https:";
    this.hostname = url.hostname.replace(/^\[|\]$/g, "");
    this.port = Number(url.port) || (this.tls ? 443 : 80);
    this.authority = url.host;
    this.cookie = config.name ?? hash32(config.url).toString(16).padStart(8, "0");
    this.weight = config.weight;
    this.maxConnections = config.maxConnections ?? options.maxConnections;
    this.slot = slot;
    this.#ints = counters.backendInts;
    this.#ledger = counters.backendLedger;
    this.#floats = counters.backendFloats;
    this.#i = backendIntBase(slot);
    this.#f = backendFloatBase(slot);
    // A backend's own settings shadow its pool's, which a reload changes in place.
    this.#options = config.proxyProtocol || config.tls
      ? Object.assign(Object.create(options), {
        proxyProtocol: config.proxyProtocol,
        ...(config.tls ? { tls: config.tls } : {}),
      })
      : options;
  }

  /** Keep-alive connections to this backend, opened by this thread. */
  get connections(): ConnectionPool {
    return this.#connections ??= new ConnectionPool(
      this.hostname,
      this.port,
      this.tls,
      this.#options,
    );
  }

  /** Whether this thread has opened any connection to the backend. */
  get hasConnections(): boolean {
    return this.#connections !== undefined;
  }

  /** Requests being proxied to this backend now, by every worker. */
  get inflight(): number {
    return Atomics.load(this.#ints, this.#i + B_INFLIGHT);
  }

  /** Takes a request slot unless `maxConnections` are in use; pair with {@linkcode release}. */
  tryAcquire(): boolean {
    const before = Atomics.add(this.#ints, this.#i + B_INFLIGHT, 1);
    if (before < this.maxConnections) {
      if (this.#ledger) this.#ledger[this.#i + B_INFLIGHT]++;
      return true;
    }
    Atomics.sub(this.#ints, this.#i + B_INFLIGHT, 1);
    return false;
  }

  /** Whether another request would exceed `maxConnections` now. */
  get full(): boolean {
    return this.inflight >= this.maxConnections;
  }

  /** Gives a request slot back; wakes whoever waits for the backend to go idle. */
  release(): void {
    if (this.#ledger) this.#ledger[this.#i + B_INFLIGHT]--;
    if (Atomics.sub(this.#ints, this.#i + B_INFLIGHT, 1) === 1 && !this.available) {
      Atomics.notify(this.#ints, this.#i + B_INFLIGHT);
    }
  }

  /** Resolves once no request is in flight (any worker's). */
  async idle(): Promise<void> {
    for (;;) {
      const n = Atomics.load(this.#ints, this.#i + B_INFLIGHT);
      if (n <= 0) return;
      const { async, value } = Atomics.waitAsync(this.#ints, this.#i + B_INFLIGHT, n, 1_000);
      if (async) await value;
    }
  }

  /** Counts a failure in a row (shared by every worker); returns the streak. */
  addFailure(): number {
    return Atomics.add(this.#ints, this.#i + B_FAILURES, 1) + 1;
  }

  /** Ends a streak of failures. */
  resetFailures(): void {
    // Read first: most requests succeed, and a store would dirty a shared cache line each time.
    if (Atomics.load(this.#ints, this.#i + B_FAILURES) !== 0) {
      Atomics.store(this.#ints, this.#i + B_FAILURES, 0);
    }
  }

  /** Consecutive failures seen by passive health checking. */
  get consecutiveFailures(): number {
    return Atomics.load(this.#ints, this.#i + B_FAILURES);
  }

  /** Peak-EWMA latency in ms (0 until the first response). */
  get ewma(): number {
    return this.#floats[this.#f + B_EWMA];
  }

  /** When `ewma` was last updated (ms since epoch). */
  get ewmaStamp(): number {
    return this.#floats[this.#f + B_STAMP];
  }

  /** Records a response's latency (ms) into the peak-EWMA estimate. */
  observeLatency(ms: number, now = Date.now()): void {
    // Plain stores: a lost update between workers costs one sample, not correctness.
    const f = this.#floats;
    const ewma = f[this.#f + B_EWMA];
    if (ewma === 0 || ms > ewma) {
      f[this.#f + B_EWMA] = ms; // peak-sensitive: a slow response is believed at once
    } else {
      const weight = Math.exp(-(now - f[this.#f + B_STAMP]) / EWMA_DECAY);
      f[this.#f + B_EWMA] = ewma * weight + ms * (1 - weight);
    }
    f[this.#f + B_STAMP] = now;
  }

  /** Sets the latency estimate outright (tests of the latency strategy). */
  setLatency(ms: number, stamp: number): void {
    this.#floats[this.#f + B_EWMA] = ms;
    this.#floats[this.#f + B_STAMP] = stamp;
  }

  /** A compact description for logs. */
  toString(): string {
    return this.url;
  }
}

/** A backend's state fields as its pool may write them. */
type Writable = { -readonly [K in keyof BackendStatus]: BackendStatus[K] };
const writable = (b: Backend) => b as unknown as Writable;

/** Derives a backend's state from health, ejection and the operator's choice. */
function derive(b: Backend, now: number): BackendState {
  return b.admin === "disabled"
    ? "disabled"
    : b.admin === "draining"
    ? "draining"
    : !b.healthy
    ? "down"
    : b.ejectedUntil > now
    ? "ejected"
    : "up";
}

/** A pool's backends and state as plain data (posted to worker threads). */
export interface PoolSnapshot {
  slowStart: number;
  options: BackendOptions;
  backends: {
    config: BackendConfig;
    slot: number;
    source: string | undefined;
    status: BackendStatus;
  }[];
}

/** A state change, as listeners hear of it. */
export type PoolListener = (backend: Backend, previous: BackendState) => void;

/**
 * A named set of backends and the only writer of their state. `backends` is replaced,
 * never mutated, so a request that took a snapshot keeps a consistent view while it changes.
 */
export class Pool {
  backends: readonly Backend[] = [];
  /** Bumped on every change to the set, a backend's state or a weight. */
  version = 0;
  /** Milliseconds over which a recovered backend ramps up to full weight (0: off). */
  slowStart = 0;
  /**
   * Resolves once every thread serving traffic has seen this pool's current state (the
   * balancer sets it when worker threads hold replicas; otherwise there is nothing to wait for).
   */
  settled: () => Promise<void> = () => Promise.resolve();
  readonly #listeners = new Set<PoolListener>();
  readonly #watchers = new Set<() => void>();
  #notifying = false;

  constructor(
    readonly name: string,
    readonly options: BackendOptions,
    readonly counters: SharedCounters,
    /** This pool's slot in the shared counters. */
    readonly slot: number,
  ) {}

  /** Looks a backend up by id. */
  get(id: string): Backend | undefined {
    return this.backends.find((b) => b.id === id);
  }

  /**
   * Adds a backend built from its config entry (a `url` entry); throws if its id or URL is
   * taken. `started` backends (present at start) need no slow start; others ramp up.
   */
  add(config: BackendConfig, options: { source?: string; started?: boolean } = {}): Backend {
    const url = config.url!;
    const id = backendId({ url, name: config.name });
    if (this.get(id)) throw new Error(`backend ${id} already exists in pool ${this.name}`);
    const origin = new URL(url).origin;
    const twin = this.backends.find((b) => new URL(b.url).origin === origin);
    if (twin) throw new Error(`backend ${twin.id} already has the URL ${origin}`);
    const backend = new Backend(
      { ...config, url },
      this.counters.allocateBackend(),
      this.counters,
      this.options,
      options.source,
    );
    writable(backend).upSince = options.started ? 0 : Date.now();
    this.backends = [...this.backends, backend];
    this.#bump();
    return backend;
  }

  /**
   * Removes a backend from rotation at once; its in-flight requests finish on their own, and
   * its counter slot is freed once they have.
   */
  remove(id: string): Backend | undefined {
    const backend = this.get(id);
    if (!backend) return undefined;
    this.backends = this.backends.filter((b) => b !== backend);
    this.#retire(backend);
    this.#bump();
    return backend;
  }

  /** Records an active probe's result and its verdict. */
  setHealth(backend: Backend, healthy: boolean, reason: string, probe?: ProbeResult): void {
    const w = writable(backend);
    if (probe) w.lastProbe = probe;
    if (backend.healthy === healthy) {
      // First verdict of a backend that started up: say why it is up.
      if (healthy && backend.reason === "starting") w.reason = reason;
      return;
    }
    w.healthy = healthy;
    this.#refresh(backend, reason);
  }

  /** Ejects a backend until `until` (ms since epoch). */
  eject(backend: Backend, until: number, reason: string): void {
    const w = writable(backend);
    w.ejections++;
    w.ejectedUntil = until;
    backend.resetFailures();
    this.#refresh(backend, reason);
  }

  /** Ends an ejection. */
  reinstate(backend: Backend, reason: string): void {
    if (backend.ejectedUntil === 0) return;
    writable(backend).ejectedUntil = 0;
    this.#refresh(backend, reason);
  }

  /** The operator's choice: enabled, draining (no new requests) or disabled. */
  setAdmin(backend: Backend, admin: AdminState, reason: string): void {
    writable(backend).admin = admin;
    this.#refresh(backend, reason);
  }

  /** Changes a backend's weight. */
  setWeight(backend: Backend, weight: number): void {
    if (backend.weight === weight) return;
    writable(backend).weight = weight;
    this.#bump();
  }

  /** Changes a backend's concurrent-request limit. */
  setMaxConnections(backend: Backend, max: number): void {
    if (backend.maxConnections === max) return;
    writable(backend).maxConnections = max;
    this.#bump();
  }

  /** Sets a backend's priority (lower values take all traffic while any of them is up). */
  setPriority(backend: Backend, priority: number): void {
    if (backend.priority === priority) return;
    writable(backend).priority = priority;
    this.#bump();
  }

  /** Restarts a backend's slow start as if it had just come up (tests, admin). */
  setUpSince(backend: Backend, at: number): void {
    writable(backend).upSince = at;
    this.#bump();
  }

  /**
   * Subscribes to every change of the set, a state, a weight or a setting, told once per
   * turn of the event loop however many changes it held; returns the unsubscribe function.
   */
  watch(watcher: () => void): () => void {
    this.#watchers.add(watcher);
    return () => this.#watchers.delete(watcher);
  }

  /** Marks a change made from outside (a new slow start, say): selectors rebuild, watchers hear. */
  touch(): void {
    this.#bump();
  }

  /** The backends and their state, as plain data for another thread's replica of this pool. */
  snapshot(): PoolSnapshot {
    return {
      slowStart: this.slowStart,
      options: { ...this.options },
      backends: this.backends.map((b) => ({
        config: b.config,
        slot: b.slot,
        source: b.source,
        status: {
          weight: b.weight,
          maxConnections: b.maxConnections,
          healthy: b.healthy,
          ejectedUntil: b.ejectedUntil,
          ejections: b.ejections,
          admin: b.admin,
          state: b.state,
          reason: b.reason,
          since: b.since,
          upSince: b.upSince,
          available: b.available,
          lastProbe: b.lastProbe,
          priority: b.priority,
        },
      })),
    };
  }

  /**
   * Makes this pool (a replica in a worker) match `snapshot`: backends are kept by slot, so
   * their connections survive state changes; ones no longer listed are retired.
   */
  applySnapshot(snapshot: PoolSnapshot): void {
    this.slowStart = snapshot.slowStart;
    Object.assign(this.options, snapshot.options);
    const bySlot = new Map(this.backends.map((b) => [b.slot, b]));
    const next: Backend[] = [];
    for (const s of snapshot.backends) {
      let b = bySlot.get(s.slot);
      if (b && b.url !== s.config.url) b = undefined;
      if (b) bySlot.delete(s.slot);
      else {b = new Backend(
          { ...s.config, url: s.config.url! },
          s.slot,
          this.counters,
          this.options,
          s.source,
        );}
      Object.assign(writable(b), s.status);
      next.push(b);
    }
    for (const gone of bySlot.values()) {
      writable(gone).available = false;
      if (gone.hasConnections) gone.connections.retire();
    }
    this.backends = next;
    this.version++;
  }

  /** Subscribes to state changes; returns the unsubscribe function. */
  onChange(listener: PoolListener): () => void {
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

  /** Closes every idle upstream connection and stops pooling (shutdown). */
  close(): void {
    for (const b of this.backends) if (b.hasConnections) b.connections.retire();
  }

  /** Re-derives a backend's state (an ejection may have run out); true if it changed. */
  refresh(backend: Backend, reason: string, now = Date.now()): boolean {
    return this.#refresh(backend, reason, now);
  }

  #refresh(backend: Backend, reason: string, now = Date.now()): boolean {
    const previous = backend.state;
    const state = derive(backend, now);
    if (state === previous) return false;
    const w = writable(backend);
    w.state = state;
    w.reason = reason;
    w.since = now;
    const wasAvailable = backend.available;
    w.available = state === "up";
    if (backend.available && !wasAvailable) w.upSince = now;
    if ((state === "disabled" || state === "down") && backend.hasConnections) {
      backend.connections.closeIdle();
    }
    this.#bump();
    for (const listener of this.#listeners) listener(backend, previous);
    return true;
  }

  #bump(): void {
    this.version++;
    if (this.#notifying || this.#watchers.size === 0) return;
    this.#notifying = true;
    queueMicrotask(() => {
      this.#notifying = false;
      for (const watcher of this.#watchers) watcher();
    });
  }

  #retire(backend: Backend): void {
    writable(backend).available = false;
    if (backend.hasConnections) backend.connections.retire();
    // The slot is reused only once no request can still count on it.
    backend.idle().then(() => this.counters.free("backend", backend.slot));
  }
}
