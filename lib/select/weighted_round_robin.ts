/** `weighted-round-robin`: nginx's smooth weighted round robin (weights 5,1,1 give a a b a c a a). */
import type { Backend, Pool } from "../pool.ts";
import { Available, firstThen, type Selector } from "./types.ts";

/** Smooth weighted round robin over available backends, using effective (slow-start) weights. */
export function smoothWeighted(pool: Pool): Selector {
  const available = new Available(pool);
  const current = new WeakMap<Backend, number>();
  return {
    candidates() {
      const list = available.list;
      if (list.length === 0) return [];
      const now = Date.now();
      let total = 0;
      let best: Backend | undefined;
      let bestScore = -Infinity;
      for (const b of list) {
        const w = pool.effectiveWeight(b, now);
        const score = (current.get(b) ?? 0) + w;
        current.set(b, score);
        total += w;
        if (score > bestScore) {
          bestScore = score;
          best = b;
        }
      }
      current.set(best!, bestScore - total);
      return firstThen(best!, list);
    },
  };
}
