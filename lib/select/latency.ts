/** `latency`: peak-EWMA (Finagle, Linkerd): two random choices, keep the lower latency × (in-flight + 1). */
import { type Backend, EWMA_DECAY, type Pool } from "../pool.ts";
import { twoChoices } from "./power_of_two.ts";
import { Available, firstThen, type Selector } from "./types.ts";

function* sortedLazily(list: readonly Backend[], cost: (b: Backend) => number): Generator<Backend> {
  yield* [...list].sort((a, b) => cost(a) - cost(b));
}

/** The expected cost of sending one more request to `b` now. */
export function latencyCost(pool: Pool, b: Backend, now: number): number {
  // An unmeasured backend costs nothing, so it is tried and measured at once.
  const ewma = b.ewma === 0 ? 0 : b.ewma * Math.exp(-(now - b.ewmaStamp) / EWMA_DECAY);
  return ((ewma + 1) * (b.inflight + 1)) / pool.effectiveWeight(b, now);
}

/** Peak-EWMA selection. */
export function latency(pool: Pool): Selector {
  const available = new Available(pool);
  return {
    candidates() {
      const list = available.list;
      if (list.length === 0) return [];
      const now = Date.now();
      const cost = (b: Backend) => latencyCost(pool, b, now);
      const best = twoChoices(pool, list, now, cost);
      return firstThen(best, sortedLazily(list, cost));
    },
  };
}
