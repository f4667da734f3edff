/** `least-connections`: fewest in-flight requests relative to weight, ties broken by (weighted) round robin. */
import type { Backend, Pool } from "../pool.ts";
import { Available, load, type Selector } from "./types.ts";

/**
 * Prefers the backend with the fewest in-flight requests per unit of effective weight.
 * Among backends tied on that (an idle pool, say), the choice goes round robin, weighted
 * like smooth weighted round robin (nginx's `least_conn`): equal weights rotate strictly,
 * unequal ones share in proportion, and a backend in slow start gets its ramped share.
 * Fallbacks follow in order of load.
 */
export function leastConnections(pool: Pool): Selector {
  const available = new Available(pool);
  const current = new WeakMap<Backend, number>();
  return {
    candidates() {
      const list = available.list;
      const n = list.length;
      if (n === 0) return [];
      const now = Date.now();
      const weights = list.map((b) => pool.effectiveWeight(b, now));
      let least = Infinity;
      for (let i = 0; i < n; i++) least = Math.min(least, list[i].inflight / weights[i]);
      let total = 0;
      let best = list[0];
      let bestScore = -Infinity;
      for (let i = 0; i < n; i++) {
        const b = list[i];
        if (b.inflight / weights[i] !== least) continue;
        const score = (current.get(b) ?? 0) + weights[i];
        current.set(b, score);
        total += weights[i];
        if (score > bestScore) {
          bestScore = score;
          best = b;
        }
      }
      current.set(best, bestScore - total);
      return byLoad(pool, best, list, now);
    },
  };
}

/** Yields `first`, then the others from least to most loaded (computed only if a retry asks). */
export function* byLoad(
  pool: Pool,
  first: Backend,
  list: readonly Backend[],
  now: number,
): Generator<Backend> {
  yield first;
  const rest = list.filter((b) => b !== first);
  rest.sort((a, b) => load(pool, a, now) - load(pool, b, now));
  yield* rest;
}
