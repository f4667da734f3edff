/**
 * Counters that every worker thread must see alike: per backend (requests in flight,
 * consecutive failures, latency estimate) and per pool (round-robin cursor, retry budget,
 * queue). They live in SharedArrayBuffers that the control plane allocates and posts to each
 * worker, updated with `Atomics`, so one worker or many behave the same.
 */

/** Int32 fields of a backend slot. */
export const B_INFLIGHT = 0;
export const B_FAILURES = 1;
const B_INTS = 2;
/** Float64 fields of a backend slot. */
export const B_EWMA = 0;
export const B_STAMP = 1;
const B_FLOATS = 2;

/** Int32 fields of a pool slot. */
export const P_CURSOR = 0;
export const P_REQUESTS = 1;
export const P_RETRIES = 2;
export const P_PENDING = 3;
export const P_RELEASES = 4;
const P_INTS = 8;

/** Slots available (backends are never more than this many at once). */
const BACKEND_SLOTS = 16_384;
const POOL_SLOTS = 1_024;

/** The buffers, as posted to workers. */
export interface SharedBuffers {
  backendInts: SharedArrayBuffer;
  backendFloats: SharedArrayBuffer;
  poolInts: SharedArrayBuffer;
}

/**
 * Typed views over the shared buffers, plus slot allocation (control plane only). A worker
 * also keeps a ledger of what it holds in the counts that must return to zero (requests in
 * flight, retries, queued requests), so a worker that crashes can be subtracted.
 */
export class SharedCounters {
  readonly backendInts: Int32Array;
  readonly backendFloats: Float64Array;
  readonly poolInts: Int32Array;
  readonly buffers: SharedBuffers;
  /** This thread's share of `backendInts` (same indexes); undefined on the control plane. */
  readonly backendLedger: Int32Array | undefined;
  /** This thread's share of `poolInts`. */
  readonly poolLedger: Int32Array | undefined;
  readonly #free = { backend: [] as number[], pool: [] as number[] };
  readonly #next = { backend: 0, pool: 0 };

  constructor(buffers?: SharedBuffers, ledger?: SharedArrayBuffer) {
    this.buffers = buffers ?? {
      backendInts: new SharedArrayBuffer(BACKEND_SLOTS * B_INTS * 4),
      backendFloats: new SharedArrayBuffer(BACKEND_SLOTS * B_FLOATS * 8),
      poolInts: new SharedArrayBuffer(POOL_SLOTS * P_INTS * 4),
    };
    this.backendInts = new Int32Array(this.buffers.backendInts);
    this.backendFloats = new Float64Array(this.buffers.backendFloats);
    this.poolInts = new Int32Array(this.buffers.poolInts);
    if (ledger) {
      this.backendLedger = new Int32Array(ledger, 0, BACKEND_SLOTS * B_INTS);
      this.poolLedger = new Int32Array(ledger, BACKEND_SLOTS * B_INTS * 4, POOL_SLOTS * P_INTS);
    }
  }

  /** A zeroed ledger buffer for one worker. */
  static newLedger(): SharedArrayBuffer {
    return new SharedArrayBuffer((BACKEND_SLOTS * B_INTS + POOL_SLOTS * P_INTS) * 4);
  }

  /** Takes back what a worker that stopped still held, as its ledger records it. */
  reclaim(ledger: SharedArrayBuffer): void {
    const backends = new Int32Array(ledger, 0, BACKEND_SLOTS * B_INTS);
    const pools = new Int32Array(ledger, BACKEND_SLOTS * B_INTS * 4, POOL_SLOTS * P_INTS);
    for (let i = 0; i < backends.length; i++) {
      if (backends[i] !== 0) Atomics.sub(this.backendInts, i, backends[i]);
    }
    for (let i = 0; i < pools.length; i++) {
      if (pools[i] !== 0) Atomics.sub(this.poolInts, i, pools[i]);
    }
    backends.fill(0);
    pools.fill(0);
  }

  /** Adds `delta` to pool int `index`, recorded in this thread's ledger; returns the value before. */
  addPool(index: number, delta: number): number {
    if (this.poolLedger) this.poolLedger[index] += delta;
    return Atomics.add(this.poolInts, index, delta);
  }

  /** A free backend slot, zeroed. Throws when all are taken. */
  allocateBackend(): number {
    const slot = this.#take("backend", BACKEND_SLOTS);
    this.backendInts.fill(0, slot * B_INTS, (slot + 1) * B_INTS);
    this.backendFloats.fill(0, slot * B_FLOATS, (slot + 1) * B_FLOATS);
    return slot;
  }

  /** A free pool slot, zeroed. */
  allocatePool(): number {
    const slot = this.#take("pool", POOL_SLOTS);
    this.poolInts.fill(0, slot * P_INTS, (slot + 1) * P_INTS);
    return slot;
  }

  /** Returns a slot once nothing refers to it any more. */
  free(kind: "backend" | "pool", slot: number): void {
    this.#free[kind].push(slot);
  }

  #take(kind: "backend" | "pool", capacity: number): number {
    const reused = this.#free[kind].shift();
    if (reused !== undefined) return reused;
    if (this.#next[kind] >= capacity) throw new Error(`more than ${capacity} ${kind}s`);
    return this.#next[kind]++;
  }
}

/** Index of a backend slot's first Int32 field. */
export function backendIntBase(slot: number): number {
  return slot * B_INTS;
}

/** Index of a backend slot's first Float64 field. */
export function backendFloatBase(slot: number): number {
  return slot * B_FLOATS;
}

/** Index of a pool slot's first Int32 field. */
export function poolIntBase(slot: number): number {
  return slot * P_INTS;
}
