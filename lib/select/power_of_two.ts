/** `power-of-two`: two random choices, keep the less loaded one. */
import type { Backend, Pool } from "../pool.ts";
import { byLoad } from "./least_connections.ts";
import { randomPick } from "./random.ts";
import { Available, type Selector } from "./types.ts";

/**
 * Picks two distinct backends at random (weighted) and returns the better by `score`,
 * lowest wins; on a tie the first pick stays, so an idle pool is shared in proportion to weight.
 */
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

/**
 * Power of two choices on in-flight requests per unit of (effective) weight. The score has
 * no "+1": two idle backends tie, and the weighted first pick decides. (With "+1" the
 * heavier of any pair would always win at low load, starving the lighter backends.)
 */
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
        (b) => b.inflight / pool.effectiveWeight(b, now),
      );
      return byLoad(pool, best, list, now);
    },
  };
}
