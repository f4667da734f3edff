/** `round-robin`: each available backend in turn; honours weights through the smooth algorithm when they differ. */
import type { Pool } from "../pool.ts";
import { P_CURSOR, poolIntBase } from "../shared.ts";
import { Available, rotation, type Selector } from "./types.ts";
import { smoothWeighted } from "./weighted_round_robin.ts";

/**
 * Strict rotation over available backends when weights are equal (nginx's round robin). The
 * cursor is shared by every worker, so the rotation is one rotation however many there are.
 */
export function roundRobin(pool: Pool): Selector {
  const available = new Available(pool);
  const weighted = smoothWeighted(pool);
  const ints = pool.counters.poolInts;
  const cursor = poolIntBase(pool.slot) + P_CURSOR;
  return {
    candidates(ctx) {
      const list = available.list;
      if (list.length === 0) return [];
      if (!equalWeights(pool, list)) return weighted.candidates(ctx);
      const first = (Atomics.add(ints, cursor, 1) >>> 0) % list.length;
      return rotation(list, first);
    },
  };
}

function equalWeights(pool: Pool, list: readonly { weight: number; upSince: number }[]): boolean {
  const w = list[0].weight;
  for (const b of list) if (b.weight !== w) return false;
  if (pool.slowStart === 0) return true;
  const rampUntil = Date.now() - pool.slowStart;
  for (const b of list) if (b.upSince > rampUntil) return false;
  return true;
}
