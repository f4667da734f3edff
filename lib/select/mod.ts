/** Builds the configured selection strategy. */
import type { PoolConfig } from "../config.ts";
import type { Pool } from "../pool.ts";
import { consistentHash } from "./consistent_hash.ts";
import { latency } from "./latency.ts";
import { leastConnections } from "./least_connections.ts";
import { maglev } from "./maglev.ts";
import { powerOfTwo } from "./power_of_two.ts";
import { random } from "./random.ts";
import { roundRobin } from "./round_robin.ts";
import type { Selector } from "./types.ts";
import { smoothWeighted } from "./weighted_round_robin.ts";

export type { SelectContext, Selector } from "./types.ts";

/** The strategy named by `config.strategy` over `pool`. */
export function createSelector(
  pool: Pool,
  config: Pick<PoolConfig, "strategy" | "hashKey">,
): Selector {
  switch (config.strategy) {
    case "round-robin":
      return roundRobin(pool);
    case "weighted-round-robin":
      return smoothWeighted(pool);
    case "least-connections":
      return leastConnections(pool);
    case "random":
      return random(pool);
    case "power-of-two":
      return powerOfTwo(pool);
    case "latency":
      return latency(pool);
    case "consistent-hash":
      return consistentHash(pool, config.hashKey);
    case "maglev":
      return maglev(pool, config.hashKey);
  }
}
