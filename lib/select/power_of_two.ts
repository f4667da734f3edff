/** `power-of-two`: two random choices, keep the less loaded one. */
import type { Backend, Pool } from "../pool.ts";
import { byLoad } from "./least_connections.ts";
import { randomPick } from "./random.ts";
import { Available, type Selector } from "./types.ts";

/** Picks two distinct backends at random (weighted) and returns the better by `score`, lowest wins. */
export function twoChoices(
  pool: Pool,
  list: readonly Backend[],
  now: number,
  score: (b: Backend) => number,
): Backend {
  const a = randomPick(pool, list, now);
  if (list.length === 1) return a;
  let b = a;
  for (let i = 0; i < 8 && b === a; i++) b = randomPick(pool, list, now);
  if (b === a) b = list[(list.indexOf(a) + 1) % list.length];
  return score(b) < score(a) ? b : a;
}

/** Power of two choices on in-flight requests per unit of weight. */
export function powerOfTwo(pool: Pool): Selector {
  const available = new Available(pool);
  return {
    candidates() {
      const list = available.list;
      if (list.length === 0) return [];
      const now = Date.now();
      const best = twoChoices(
        pool,
        list,
        now,
        (b) => (b.inflight + 1) / pool.effectiveWeight(b, now),
      );
      return byLoad(pool, best, list, now);
    },
  };
}
