/** `consistent-hash`: a hash ring with virtual nodes, keyed by client IP, a header, cookie, query parameter or path. */
import { hash32 } from "../hash.ts";
import { cookieValue } from "../message.ts";
import type { Backend, Pool } from "../pool.ts";
import { roundRobin } from "./round_robin.ts";
import { rebuiltOnChange, type SelectContext, type Selector } from "./types.ts";

/** Virtual nodes per unit of weight: enough for an even spread, few enough to rebuild quickly. */
const VNODES = 160;

/** Extracts the hash key a `hashKey` setting names; undefined when the request lacks it. */
export function keyExtractor(spec: string): (ctx: SelectContext) => string | undefined {
  if (spec === "ip") return (ctx) => ctx.ip;
  if (spec === "path") {
    return (ctx) => {
      const q = ctx.target.indexOf("?");
      return q === -1 ? ctx.target : ctx.target.slice(0, q);
    };
  }
  const colon = spec.indexOf(":");
  const kind = spec.slice(0, colon);
  const name = spec.slice(colon + 1);
  if (kind === "header") {
    const key = name.toLowerCase();
    return (ctx) => ctx.request.header(key);
  }
  if (kind === "cookie") return (ctx) => cookieValue(ctx.request.header("cookie"), name);
  if (kind === "query") {
    return (ctx) => {
      const q = ctx.target.indexOf("?");
      if (q === -1) return undefined;
      return new URLSearchParams(ctx.target.slice(q + 1)).get(name) ?? undefined;
    };
  }
  throw new Error(`unknown hash key ${spec}`);
}

/** A ring over every backend (available or not), so a backend's absence only moves its own keys. */
export class HashRing {
  readonly points: Uint32Array;
  readonly owners: Backend[];

  constructor(backends: readonly Backend[]) {
    const nodes: [number, Backend][] = [];
    for (const b of backends) {
      const count = Math.max(0, Math.round(b.weight * VNODES));
      for (let i = 0; i < count; i++) nodes.push([hash32(`${b.id}#${i}`), b]);
    }
    nodes.sort((x, y) => x[0] - y[0]);
    this.points = Uint32Array.from(nodes, (n) => n[0]);
    this.owners = nodes.map((n) => n[1]);
  }

  /** Distinct backends clockwise from the key's position, skipping unavailable ones. */
  *walk(key: string): Generator<Backend> {
    const n = this.points.length;
    if (n === 0) return;
    const h = hash32(key);
    let lo = 0;
    let hi = n;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.points[mid] < h) lo = mid + 1;
      else hi = mid;
    }
    const seen = new Set<Backend>();
    for (let i = 0; i < n; i++) {
      const b = this.owners[(lo + i) % n];
      if (seen.has(b)) continue;
      seen.add(b);
      if (b.available) yield b;
    }
  }
}

/** Consistent hashing on `hashKey`; requests without the key fall back to round robin. */
export function consistentHash(pool: Pool, hashKey: string): Selector {
  const extract = keyExtractor(hashKey);
  const fallback = roundRobin(pool);
  const ring = rebuiltOnChange(pool, (backends) => new HashRing(backends));
  return {
    candidates(ctx) {
      const key = extract(ctx);
      if (key === undefined) return fallback.candidates(ctx);
      return ring().walk(key);
    },
  };
}
