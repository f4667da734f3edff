/** `least-connections`: fewest in-flight requests relative to weight, ties broken round robin. */
import type { Backend, Pool } from "../pool.ts";
import { Available, load, type Selector } from "./types.ts";

/** Prefers the backend with the lowest (in-flight + 1) / weight; fallbacks in order of load. */
export function leastConnections(pool: Pool): Selector {
  const available = new Available(pool);
  let offset = 0;
  return {
    candidates() {
      const list = available.list;
      const n = list.length;
      if (n === 0) return [];
      const now = Date.now();
      const start = offset++ % n;
      let best = list[start];
      let bestLoad = load(pool, best, now);
      for (let i = 1; i < n; i++) {
        const b = list[(start + i) % n];
        const l = load(pool, b, now);
        if (l < bestLoad) {
          best = b;
          bestLoad = l;
        }
      }
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
