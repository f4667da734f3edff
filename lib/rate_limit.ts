/**
 * Per-key rate limits (GCRA, the token bucket as one timestamp per key) in a fixed table of
 * shared memory, so every worker enforces the same limit. A key's slot holds a 16-bit tag of
 * the key and its "theoretical arrival time"; keys whose slots collide share a bucket (which
 * can only make the limit stricter), and a slot whose time has passed is free for any key.
 */
import { hash32 } from "./hash.ts";

/** Settings of a route's `rateLimit:`. */
export interface RateLimitOptions {
  /** Sustained requests per second per key. */
  perSecond: number;
  /** Requests a key may send at once after being idle. */
  burst: number;
}

const SLOTS = 4096;
const PROBES = 4;
const TICKS_PER_MS = 10n; // time is kept in 0.1 ms
const TIME_BITS = 48n;
const TIME_MASK = (1n << TIME_BITS) - 1n;

/** A table of buckets; `buffer` may be posted to workers to share it. */
export class RateLimiter {
  readonly buffer: SharedArrayBuffer;
  // Unsigned: a tag with its top bit set must read back as the same positive BigInt.
  readonly #slots: BigUint64Array;
  readonly #interval: bigint;
  readonly #tolerance: bigint;

  constructor(readonly options: RateLimitOptions, buffer?: SharedArrayBuffer) {
    this.buffer = buffer ?? new SharedArrayBuffer(SLOTS * 8);
    this.#slots = new BigUint64Array(this.buffer);
    const interval = Math.max(1, Math.round(10_000 / options.perSecond));
    this.#interval = BigInt(interval);
    this.#tolerance = BigInt(interval * (Math.max(1, options.burst) - 1));
  }

  /**
   * Counts a request for `key`: 0 if it is within the limit, otherwise the milliseconds until
   * the key may send again.
   */
  take(key: string, now = Date.now()): number {
    const h = hash32(key);
    const tag = BigInt(h >>> 16) << TIME_BITS;
    const at = BigInt(Math.floor(now)) * TICKS_PER_MS;
    const slots = this.#slots;
    // Find the key's slot among a few, or a free one (its time passed), or share the first.
    let index = h & (SLOTS - 1);
    for (let i = 0; i < PROBES; i++) {
      const j = (index + i) & (SLOTS - 1);
      const v = Atomics.load(slots, j);
      if ((v & ~TIME_MASK) === tag || (v & TIME_MASK) <= at) {
        index = j;
        break;
      }
    }
    for (;;) {
      const v = Atomics.load(slots, index);
      // Another key's unexpired time is shared rather than reset: collisions only tighten.
      const previous = v & TIME_MASK;
      const tat = previous > at ? previous : at;
      if (tat - at > this.#tolerance) {
        return Number((tat - at - this.#tolerance + TICKS_PER_MS - 1n) / TICKS_PER_MS);
      }
      const next = tag | ((tat + this.#interval) & TIME_MASK);
      if (Atomics.compareExchange(slots, index, v, next) === v) return 0;
    }
  }
}
