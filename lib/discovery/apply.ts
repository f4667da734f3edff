/**
 * Discovered endpoints into a pool: addresses that appear are added (up, ramping with slow
 * start), addresses that stay keep their state and take new weights and priorities, and
 * addresses that disappear are drained (no new requests, in-flight ones finish), then removed.
 */
import type { BackendConfig } from "../config.ts";
import type { Logger } from "../log.ts";
import { backendId } from "../net.ts";
import type { Backend, Pool } from "../pool.ts";
import { type Endpoint, endpointAddress } from "./dns.ts";

/** The reason a backend is draining because its address left DNS. */
const GONE = "no longer in DNS";

/**
 * Makes `pool`'s backends from `source` (`dns: NAME`) match `endpoints`. `entry` is the
 * configured `dns:` entry (weight for A records, limits, TLS, PROXY protocol); `changed` is
 * called after backends were added or removed (health checks follow).
 */
export function applyEndpoints(
  pool: Pool,
  source: string,
  entry: BackendConfig,
  endpoints: readonly Endpoint[],
  log: Logger,
  changed: () => void,
): void {
  const scheme = entry.tls ? "https" : "http";
  const wanted = new Map<string, Endpoint>();
  for (const e of endpoints) wanted.set(backendId({ url: `${scheme}://${endpointAddress(e)}` }), e);
  let added = false;
  for (const [id, e] of wanted) {
    const weight = entry.type === "SRV" ? e.weight : entry.weight;
    const existing = pool.get(id);
    if (existing) {
      if (existing.source !== source) {
        log.warn(`discovered ${id} is already in pool ${pool.name}; not added again`, { source });
        continue;
      }
      pool.setWeight(existing, weight);
      pool.setPriority(existing, e.priority);
      if (existing.admin === "draining" && existing.reason.startsWith(GONE)) {
        pool.setAdmin(existing, "enabled", `back in DNS (${source})`);
        log.info(`backend ${existing.url} is back in DNS`, { pool: pool.name, source });
      }
      continue;
    }
    const config: BackendConfig = {
      url: `${scheme}://${endpointAddress(e)}`,
      weight,
      maxConnections: entry.maxConnections,
      tls: entry.tls,
      proxyProtocol: entry.proxyProtocol,
    };
    try {
      const backend = pool.add(config, { source });
      pool.setPriority(backend, e.priority);
      added = true;
      log.info(`backend ${backend.url} discovered`, { pool: pool.name, source });
    } catch (err) {
      log.warn(`discovered ${id} not added: ${(err as Error).message}`, { pool: pool.name });
    }
  }
  for (const b of pool.backends) {
    if (b.source !== source || wanted.has(b.id)) continue;
    if (b.admin === "draining" && b.reason.startsWith(GONE)) continue;
    drainAway(pool, b, `${GONE} (${source})`, log, changed);
  }
  if (added) changed();
}

/** Drains a backend, then removes it unless it came back meanwhile. */
export function drainAway(
  pool: Pool,
  b: Backend,
  reason: string,
  log: Logger,
  changed: () => void,
): void {
  pool.setAdmin(b, "draining", reason);
  log.info(`backend ${b.url} is draining: ${reason}`, { pool: pool.name, inflight: b.inflight });
  b.idle().then(() => {
    if (pool.get(b.id) !== b || b.admin !== "draining" || b.reason !== reason) return;
    pool.remove(b.id);
    log.info(`backend ${b.url} removed: ${reason}`, { pool: pool.name });
    changed();
  });
}
