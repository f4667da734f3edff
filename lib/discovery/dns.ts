/**
 * One discovery target resolved into endpoints: every address of an A/AAAA name, or every
 * address of every SRV target with the record's port, priority and weight (RFC 2782), plus the
 * smallest TTL seen on the way, so the caller knows when to ask again.
 */
import { DnsError, query, type QueryOptions, systemNameServers } from "./client.ts";
import { normalizeName, parseNameServer } from "./names.ts";
import type { DnsRecord, QueryType } from "./wire.ts";

/** Which records name the endpoints. */
export type DiscoveryType = "A" | "AAAA" | "A+AAAA" | "SRV";

/** A name to discover backends from. */
export interface DnsTarget {
  /** The DNS name: absolute, no search domains (`api.default.svc.cluster.local`). */
  dns: string;
  /**
   * A and AAAA: each address becomes a backend on this port (required). SRV: must be unset,
   * the records carry the ports.
   */
  port?: number;
  /**
   * @default "A"
   */
  type?: DiscoveryType;
}

/** One discovered backend address. */
export interface Endpoint {
  /** An IP address (IPv6 without brackets). */
  host: string;
  port: number;
  /** SRV priority: lower values take all traffic while any of them is up. 0 for A/AAAA. */
  priority: number;
  /**
   * The backend weight to use, 1..1000: 1 for A/AAAA; for SRV the record's weight mapped as
   * {@linkcode srvEndpoints} describes.
   */
  weight: number;
}

/** The outcome of one successful resolution. */
export interface Resolution {
  /** Sorted by priority, address (IPv4 first, numerically), port; never empty. */
  endpoints: Endpoint[];
  /** The smallest TTL of every record used (seconds). */
  ttl: number;
}

/** How a target is resolved. */
export interface ResolveOptions extends Omit<QueryOptions, "nameServers"> {
  /**
   * `host:port` of the name server to ask (port 53 if omitted).
   * @default the system's (resolv.conf `nameserver` lines)
   */
  nameServer?: string;
}

/** The highest backend weight sluice accepts. */
export const MAX_WEIGHT = 1000;
/** CNAME hops followed before giving up (a loop or a misconfiguration). */
const MAX_CNAME_HOPS = 8;

/**
 * Resolves `target` into endpoints. Throws a {@linkcode DnsError}: for a failed lookup
 * (`timeout`, `servfail`, `refused`, `network`, `malformed`), and also when the answer names no
 * endpoint at all (`nxdomain`, `nodata`), so that callers never empty a pool because of one
 * answer. For SRV, a target without addresses is skipped, but any failed lookup fails the whole
 * resolution: answering with the targets that happened to resolve would drain the others.
 */
export async function resolveTarget(
  target: DnsTarget,
  options: ResolveOptions = {},
): Promise<Resolution> {
  const type = target.type ?? "A";
  const name = normalizeName(target.dns);
  const { nameServer, ...rest } = options;
  const q: QueryOptions = {
    ...rest,
    // Read resolv.conf once for all the questions of this resolution.
    nameServers: nameServer === undefined
      ? await systemNameServers()
      : [parseNameServer(nameServer)],
  };
  if (type === "SRV") {
    if (target.port !== undefined) {
      throw new DnsError("config", name, type, "port must not be set: SRV records carry ports");
    }
    return await resolveSrv(name, q);
  }
  if (target.port === undefined || !Number.isInteger(target.port) || target.port < 1) {
    throw new DnsError("config", name, type, "a port (1-65535) is required for A/AAAA names");
  }
  const port = target.port;
  const found = await addresses(name, type === "A+AAAA" ? ["A", "AAAA"] : [type], q);
  if (found.addresses.length === 0) throw emptyAnswer(name, type, found);
  return {
    endpoints: found.addresses.map((host) => ({ host, port, priority: 0, weight: 1 })).sort(
      compareEndpoints,
    ),
    ttl: found.ttl,
  };
}

/** What an address lookup found (one name, one or both families). */
interface Addresses {
  addresses: string[];
  /** Smallest TTL (seconds); Infinity when nothing was found. */
  ttl: number;
  /** True when every family asked said NXDOMAIN. */
  nxdomain: boolean;
}

function emptyAnswer(name: string, type: string, found: { nxdomain: boolean }): DnsError {
  return found.nxdomain
    ? new DnsError("nxdomain", name, type, "NXDOMAIN (no such name)")
    : new DnsError("nodata", name, type, `no ${type} records`);
}

/** Every address of `name` in the families asked for; lookups run in parallel. */
async function addresses(
  name: string,
  families: ("A" | "AAAA")[],
  q: QueryOptions,
): Promise<Addresses> {
  const results = await Promise.all(families.map((f) => records(name, f, q)));
  const out: Addresses = { addresses: [], ttl: Infinity, nxdomain: true };
  for (const r of results) {
    out.nxdomain &&= r.nxdomain;
    out.ttl = Math.min(out.ttl, r.ttl);
    for (const rec of r.records) {
      if ((rec.type === "A" || rec.type === "AAAA") && !out.addresses.includes(rec.address)) {
        out.addresses.push(rec.address);
      }
    }
  }
  return out;
}

/**
 * The records of `type` for `name`, following a CNAME chain: in the same answer (what a
 * recursive server sends), or with a new question when the chain stops short.
 */
async function records(
  name: string,
  type: QueryType,
  q: QueryOptions,
): Promise<{ records: DnsRecord[]; ttl: number; nxdomain: boolean }> {
  let ttl = Infinity;
  let current = name;
  let hops = 0;
  for (;;) {
    const response = await query(current, type, q);
    const asked = current;
    for (;;) {
      const alias = response.answers.find((r) => r.type === "CNAME" && r.name === current);
      if (alias?.type !== "CNAME") break;
      if (++hops > MAX_CNAME_HOPS) {
        throw new DnsError("malformed", name, type, `more than ${MAX_CNAME_HOPS} CNAME hops`);
      }
      ttl = Math.min(ttl, alias.ttl);
      current = alias.target;
    }
    const found = response.answers.filter((r) => r.type === type && r.name === current);
    if (found.length) {
      for (const r of found) ttl = Math.min(ttl, r.ttl);
      return { records: found, ttl, nxdomain: false };
    }
    if (response.rcode === 3) return { records: [], ttl, nxdomain: true };
    if (current === asked) return { records: [], ttl, nxdomain: false }; // NODATA
    // The chain ended at a name this answer did not cover (a non-recursive server): ask for it.
  }
}

/** An SRV record as returned, before its target is resolved. */
export interface SrvRecord {
  priority: number;
  weight: number;
  port: number;
  /** No trailing dot; "" for "." (the service is decidedly not available here). */
  target: string;
}

async function resolveSrv(name: string, q: QueryOptions): Promise<Resolution> {
  const found = await records(name, "SRV", q);
  const srv = found.records.filter((r) => r.type === "SRV").map((
    { priority, weight, port, target },
  ) => ({
    priority,
    weight,
    port,
    target,
  }));
  if (srv.length === 0) throw emptyAnswer(name, "SRV", found);
  const usable = srv.filter((r) => r.target !== "");
  if (usable.length === 0) {
    throw new DnsError("nodata", name, "SRV", 'the only target is "." (service not available)');
  }
  let ttl = found.ttl;
  const targets = [...new Set(usable.map((r) => r.target))];
  const resolved = new Map<string, string[]>();
  await Promise.all(targets.map(async (t) => {
    if (isIPLiteral(t)) return void resolved.set(t, [t]); // not RFC 2782, but seen in the wild
    const a = await addresses(t, ["A", "AAAA"], q);
    ttl = Math.min(ttl, a.ttl);
    resolved.set(t, a.addresses);
  }));
  const endpoints = srvEndpoints(usable, (t) => resolved.get(t) ?? []);
  if (endpoints.length === 0) {
    throw new DnsError("nodata", name, "SRV", `no target has an address (${targets.join(", ")})`);
  }
  return { endpoints, ttl };
}

function isIPLiteral(s: string): boolean {
  return /^\d{1,3}(\.\d{1,3}){3}$/.test(s) || s.includes(":");
}

/**
 * Expands SRV records into endpoints, one per address of each target, with weights sluice can
 * use (1..1000) that keep RFC 2782's shares within each priority:
 * - if every record of a priority has weight 0, they share equally (RFC 2782 then picks
 *   uniformly);
 * - otherwise a weight-0 record gets 1/1000 of the heaviest record's share ("a very small chance
 *   of being selected"), never none (sluice's weight 0 would mean no traffic at all);
 * - a record's share is split evenly over its target's addresses (a dual-stack target does not
 *   count double);
 * - the shares are used as they are when they are whole numbers from 1 to 1000 (what DNS says
 *   stays visible), otherwise scaled so the largest of the priority is 1000, rounded, at least 1.
 * The same address and port from two records becomes one endpoint: the lower priority wins,
 * equal priorities add their weights (up to 1000). Records whose target has no address are
 * dropped. Sorted by {@linkcode compareEndpoints}.
 */
export function srvEndpoints(
  records: readonly SrvRecord[],
  addressesOf: (target: string) => readonly string[],
): Endpoint[] {
  const byPriority = new Map<number, { r: SrvRecord; hosts: readonly string[] }[]>();
  for (const r of records) {
    const hosts = addressesOf(r.target);
    if (hosts.length === 0) continue;
    const group = byPriority.get(r.priority) ?? [];
    group.push({ r, hosts });
    byPriority.set(r.priority, group);
  }
  const merged = new Map<string, Endpoint>();
  for (const [priority, group] of byPriority) {
    const heaviest = Math.max(...group.map((g) => g.r.weight));
    const shares = group.map(({ r, hosts }) => {
      const weight = heaviest === 0 ? 1 : r.weight === 0 ? heaviest / MAX_WEIGHT : r.weight;
      return weight / hosts.length;
    });
    const asIs = shares.every((s) => Number.isInteger(s) && s >= 1 && s <= MAX_WEIGHT);
    const scale = asIs ? 1 : MAX_WEIGHT / Math.max(...shares);
    group.forEach(({ r, hosts }, i) => {
      const weight = Math.max(1, Math.round(shares[i] * scale));
      for (const host of hosts) {
        const key = `${host}|${r.port}`;
        const seen = merged.get(key);
        if (!seen || seen.priority > priority) {
          merged.set(key, { host, port: r.port, priority, weight });
        } else if (seen.priority === priority) {
          seen.weight = Math.min(MAX_WEIGHT, seen.weight + weight);
        }
      }
    });
  }
  return [...merged.values()].sort(compareEndpoints);
}

/** Orders endpoints by priority, then address (IPv4 before IPv6, numerically), then port. */
export function compareEndpoints(a: Endpoint, b: Endpoint): number {
  if (a.priority !== b.priority) return a.priority - b.priority;
  if (a.host !== b.host) {
    const ka = addressKey(a.host);
    const kb = addressKey(b.host);
    return ka < kb ? -1 : ka > kb ? 1 : 0;
  }
  return a.port - b.port;
}

/** A string that sorts addresses numerically: "4" + 8 hex digits, or "6" + 32. */
function addressKey(host: string): string {
  if (!host.includes(":")) {
    return "4" + host.split(".").map((o) => Number(o).toString(16).padStart(2, "0")).join("");
  }
  const [head, tail = ""] = host.split("::");
  const h = head ? head.split(":") : [];
  const t = tail ? tail.split(":") : [];
  const groups = host.includes("::")
    ? [...h, ...Array(8 - h.length - t.length).fill("0"), ...t]
    : h;
  return "6" + groups.map((g) => g.padStart(4, "0")).join("");
}

/** `host:port` with IPv6 in brackets: the backend's id and URL authority. */
export function endpointAddress(e: { host: string; port: number }): string {
  return e.host.includes(":") ? `[${e.host}]:${e.port}` : `${e.host}:${e.port}`;
}
