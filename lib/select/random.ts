/** `random`: a weighted random pick; fallbacks follow in random order. */
import type { Backend, Pool } from "../pool.ts";
import { Available, firstThen, rotation, type Selector } from "./types.ts";

/** Picks a backend at random with probability proportional to its effective weight. */
export function randomPick(pool: Pool, list: readonly Backend[], now: number): Backend {
  let total = 0;
  for (const b of list) total += pool.effectiveWeight(b, now);
  let r = Math.random() * total;
  for (const b of list) {
    r -= pool.effectiveWeight(b, now);
    if (r < 0) return b;
  }
  return list[list.length - 1];
}

/** Weighted random selection. */
export function random(pool: Pool): Selector {
  const available = new Available(pool);
  return {
    candidates() {
      const list = available.list;
      if (list.length === 0) return [];
      const first = randomPick(pool, list, Date.now());
      return firstThen(first, rotation(list, Math.floor(Math.random() * list.length)));
    },
  };
}
