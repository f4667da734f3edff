/** `round-robin`: each available backend in turn; honours weights through the smooth algorithm when they differ. */
import type { Pool } from "../pool.ts";
import { Available, rotation, type Selector } from "./types.ts";
import { smoothWeighted } from "./weighted_round_robin.ts";

/** Strict rotation over available backends when weights are equal (nginx's round robin). */
export function roundRobin(pool: Pool): Selector {
  const available = new Available(pool);
  const weighted = smoothWeighted(pool);
  let next = 0;
  return {
    candidates(ctx) {
      const list = available.list;
      if (list.length === 0) return [];
      if (!equalWeights(pool, list)) return weighted.candidates(ctx);
      const first = next++ % list.length;
      if (next >= Number.MAX_SAFE_INTEGER) next = 0;
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
