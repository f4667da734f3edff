/**
 * The bounded wait queue used when every candidate backend is at its connection limit. The
 * count of waiters and the wake-ups are in shared memory, so a slot freed by any worker wakes
 * a waiter in any worker, and `maxPending` bounds the whole balancer.
 */
import { P_PENDING, P_RELEASES, poolIntBase, type SharedCounters } from "./shared.ts";

/** Waiters for a free backend slot; at most `maxPending` wait, each for at most `timeout` ms. */
export class SlotQueue {
  readonly #counters: SharedCounters;
  readonly #ints: Int32Array;
  readonly #pending: number;
  readonly #releases: number;

  constructor(
    public maxPending: number,
    public timeout: number,
    counters: SharedCounters,
    slot: number,
  ) {
    this.#counters = counters;
    this.#ints = counters.poolInts;
    this.#pending = poolIntBase(slot) + P_PENDING;
    this.#releases = poolIntBase(slot) + P_RELEASES;
  }

  /** Requests waiting now, in every worker. */
  get pending(): number {
    return Atomics.load(this.#ints, this.#pending);
  }

  /**
   * Waits for a slot to be freed; resolves false at once when the queue is full, or after
   * `timeout` ms (the configured `queueTimeout` by default; a request that waits again after
   * losing a freed slot passes what is left of its own).
   */
  async wait(timeout = this.timeout): Promise<boolean> {
    if (timeout <= 0) return false;
    if (this.#counters.addPool(this.#pending, 1) >= this.maxPending) {
      this.#counters.addPool(this.#pending, -1);
      return false;
    }
    try {
      const seen = Atomics.load(this.#ints, this.#releases);
      const result = Atomics.waitAsync(this.#ints, this.#releases, seen, timeout);
      const outcome = result.async ? await result.value : result.value;
      return outcome !== "timed-out";
    } finally {
      this.#counters.addPool(this.#pending, -1);
    }
  }

  /** A slot was freed: wake the oldest waiter, if any. */
  notify(): void {
    if (Atomics.load(this.#ints, this.#pending) === 0) return;
    Atomics.add(this.#ints, this.#releases, 1);
    Atomics.notify(this.#ints, this.#releases, 1);
  }
}
