/**
 * `maglev`: Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable Software
 * Network Load Balancer", NSDI 2016, §3.4). A prime-sized lookup table is filled by letting each
 * backend claim slots in turn along its own permutation of the table; a key's backend is the
 * owner of slot `hash(key) mod M`. Compared with the hash ring of `consistent-hash` it spreads
 * keys almost perfectly evenly (slot counts of equal backends differ by at most one) and a lookup
 * is one array read, at the price of a table rebuild (milliseconds) when the set changes.
 */
import { hash32 } from "../hash.ts";
import type { Backend, Pool } from "../pool.ts";
import { keyExtractor } from "./consistent_hash.ts";
import { roundRobin } from "./round_robin.ts";
import { rebuiltOnChange, type Selector } from "./types.ts";

/**
 * The default lookup table size: prime (the permutations need it) and large enough that a
 * thousand backends still get 65 slots each (the paper keeps M above 100 × N for even spread;
 * below that the spread stays even here, only the disruption on change grows slightly).
 */
export const MAGLEV_TABLE_SIZE = 65_537;

/** Options of {@linkcode maglev}. */
export interface MaglevOptions {
  /**
   * Lookup table size, a prime. Every process that should agree on keys must use the same size.
   * @default 65537
   */
  tableSize?: number;
}

/** What a table needs of a backend: its stable id, its weight and whether it takes requests now. */
export interface MaglevMember {
  readonly id: string;
  readonly weight: number;
  readonly available: boolean;
}

/** A Maglev lookup table over every backend with weight above 0, available or not. */
export class MaglevTable<B extends MaglevMember = Backend> {
  /** The table size M. */
  readonly size: number;
  /** The backends that took part, in id order (the build order, so pool order does not matter). */
  readonly backends: readonly B[];
  /** Slot → index into `backends`; -1 only when no backend has weight. */
  readonly slots: Int32Array;

  constructor(backends: readonly B[], size: number = MAGLEV_TABLE_SIZE) {
    if (!isPrime(size)) throw new Error(`maglev table size must be prime (got ${size})`);
    this.size = size;
    // Sorted by id so that processes listing the same backends in a different order still build
    // the same table: the fill below is order-dependent.
    this.backends = backends.filter((b) => b.weight > 0).sort((a, b) =>
      a.id < b.id ? -1 : a.id > b.id ? 1 : 0
    );
    this.slots = new Int32Array(size).fill(-1);
    fill(this.slots, this.backends);
  }

  /** The backend owning `key`'s slot, available or not; undefined when no backend has weight. */
  owner(key: string): B | undefined {
    const i = this.slots[hash32(key) % this.size];
    return i === -1 ? undefined : this.backends[i];
  }

  /**
   * Available backends for `key`, best first: the slot's owner, then the distinct owners of the
   * following slots (a deterministic, key-dependent order, so replicas fail a key over to the same
   * backend and a down backend's keys spread over the others), then any backend left without a
   * slot (only when there are more backends than slots), in id order.
   */
  *walk(key: string): Generator<B> {
    const n = this.backends.length;
    if (n === 0) return;
    const size = this.size;
    const start = hash32(key) % size;
    const first = this.slots[start];
    if (this.backends[first].available) yield this.backends[first];
    if (n === 1) return;
    // Only a retry or a down owner gets here, so the common request allocates nothing more.
    const seen = new Uint8Array(n);
    seen[first] = 1;
    let found = 1;
    for (let k = 1; k < size && found < n; k++) {
      const slot = start + k < size ? start + k : start + k - size;
      const i = this.slots[slot];
      if (seen[i]) continue;
      seen[i] = 1;
      found++;
      if (this.backends[i].available) yield this.backends[i];
    }
    for (let i = 0; found < n && i < n; i++) {
      if (seen[i]) continue;
      found++;
      if (this.backends[i].available) yield this.backends[i];
    }
  }
}

/**
 * Populates `slots` (the paper's Listing 1), with weights as Envoy does them: a backend of weight
 * w takes a turn in a round only while its turns so far stay within w / maxWeight of the rounds,
 * so its slot share is proportional to its weight. Every backend takes the first round, so each
 * one gets at least one slot while there are enough slots.
 */
function fill(slots: Int32Array, backends: readonly MaglevMember[]): void {
  const size = slots.length;
  const n = backends.length;
  if (n === 0) return;
  // next[i] is the backend's next permutation entry, (offset + j * skip) mod M for its j-th
  // turn, advanced by adding skip rather than multiplying.
  const next = new Float64Array(n);
  const skip = new Float64Array(n);
  const weight = new Float64Array(n);
  const target = new Float64Array(n);
  let maxWeight = 0;
  for (let i = 0; i < n; i++) {
    const id = backends[i].id;
    next[i] = hash32(`${id}#maglev-offset`) % size;
    skip[i] = (hash32(`${id}#maglev-skip`) % (size - 1)) + 1;
    weight[i] = backends[i].weight;
    if (weight[i] > maxWeight) maxWeight = weight[i];
  }
  let filled = 0;
  for (let round = 1; filled < size; round++) {
    for (let i = 0; i < n && filled < size; i++) {
      if (round * weight[i] < target[i]) continue;
      target[i] += maxWeight;
      let c = next[i];
      while (slots[c] !== -1) {
        c += skip[i];
        if (c >= size) c -= size;
      }
      slots[c] = i;
      c += skip[i];
      next[i] = c >= size ? c - size : c;
      filled++;
    }
  }
}

function isPrime(n: number): boolean {
  if (!Number.isInteger(n) || n < 2) return false;
  for (let d = 2; d * d <= n; d++) if (n % d === 0) return false;
  return true;
}

/** Maglev hashing on `hashKey` (as `consistent-hash` reads it); requests without the key fall back to round robin. */
export function maglev(pool: Pool, hashKey: string, options: MaglevOptions = {}): Selector {
  const size = options.tableSize ?? MAGLEV_TABLE_SIZE;
  if (!isPrime(size)) throw new Error(`maglev table size must be prime (got ${size})`);
  const extract = keyExtractor(hashKey);
  const fallback = roundRobin(pool);
  const table = rebuiltOnChange(pool, (backends) => new MaglevTable(backends, size));
  return {
    candidates(ctx) {
      const key = extract(ctx);
      if (key === undefined) return fallback.candidates(ctx);
      return table().walk(key);
    },
  };
}
