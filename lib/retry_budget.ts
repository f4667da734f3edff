/**
 * A retry budget in the manner of Envoy's: retries in flight may be at most a share of the
 * requests in flight, and always at least a few. A backend that dies costs no request at any
 * traffic level (a handful of retries is always allowed), while a retry storm under load is
 * bounded. The counts are shared by every worker.
 */
import { P_REQUESTS, P_RETRIES, poolIntBase, type SharedCounters } from "./shared.ts";

/** Settings of `retryBudget:`. */
export interface RetryBudgetOptions {
  /** Retries in flight as a share of requests in flight (percent). */
  percent: number;
  /** Retries that may always be in flight. */
  minConcurrent: number;
}

/** The budget of one pool, over its slot in the shared counters. */
export class RetryBudget {
  readonly #counters: SharedCounters;
  readonly #ints: Int32Array;
  readonly #requests: number;
  readonly #retries: number;

  constructor(public options: RetryBudgetOptions, counters: SharedCounters, slot: number) {
    this.#counters = counters;
    this.#ints = counters.poolInts;
    this.#requests = poolIntBase(slot) + P_REQUESTS;
    this.#retries = poolIntBase(slot) + P_RETRIES;
  }

  /** A request started; pair with {@linkcode end}. */
  begin(): void {
    this.#counters.addPool(this.#requests, 1);
  }

  /** A request finished. */
  end(): void {
    this.#counters.addPool(this.#requests, -1);
  }

  /** Takes a retry from the budget (pair with {@linkcode endRetry}); false when it is spent. */
  tryRetry(): boolean {
    const { percent, minConcurrent } = this.options;
    const allowed = Math.max(
      minConcurrent,
      Math.floor((Atomics.load(this.#ints, this.#requests) * percent) / 100),
    );
    if (this.#counters.addPool(this.#retries, 1) < allowed) return true;
    this.#counters.addPool(this.#retries, -1);
    return false;
  }

  /** A retry attempt is over (answered or failed). */
  endRetry(): void {
    this.#counters.addPool(this.#retries, -1);
  }

  /** Requests and retries in flight now. */
  get inFlight(): { requests: number; retries: number } {
    return {
      requests: Atomics.load(this.#ints, this.#requests),
      retries: Atomics.load(this.#ints, this.#retries),
    };
  }
}
