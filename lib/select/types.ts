/** The selection interface: a strategy turns a request into backends in order of preference. */
import type { ClientRequest } from "../message.ts";
import type { Backend, Pool } from "../pool.ts";

/** What a strategy may look at to choose. */
export interface SelectContext {
  /** The client's request. */
  readonly request: ClientRequest;
  /** The client's address. */
  readonly ip: string;
  /** The request target as sent: path and query. */
  readonly target: string;
  /** The sticky-session cookie's value, when sticky sessions are on and the client sent one. */
  readonly pinned?: string;
}

/**
 * A selection strategy. `candidates` yields available backends, best first; a retry
 * simply takes the next one, so every strategy gets failover for free.
 */
export interface Selector {
  candidates(ctx: SelectContext): Iterable<Backend>;
}

/**
 * The backends that may take new requests (state `up`, weight above 0) and, of those, only the
 * ones of the lowest priority (SRV records' priority; 0 for every other backend), recomputed
 * only when the pool changes.
 */
export class Available {
  #version = -1;
  #list: Backend[] = [];
  constructor(readonly pool: Pool) {}

  /** The current list; do not mutate. */
  get list(): Backend[] {
    if (this.#version !== this.pool.version) {
      this.#version = this.pool.version;
      const up = this.pool.backends.filter((b) => b.available && b.weight > 0);
      let lowest = Infinity;
      for (const b of up) if (b.priority < lowest) lowest = b.priority;
      this.#list = up.filter((b) => b.priority === lowest);
    }
    return this.#list;
  }
}

/**
 * Yields `list` starting at `first`, wrapping around, each backend once. An iterator object
 * rather than a generator: round robin makes one per request, and resuming a generator costs
 * more than a method call.
 */
export function rotation(list: readonly Backend[], first: number): IterableIterator<Backend> {
  return new Rotation(list, first);
}

class Rotation implements IterableIterator<Backend> {
  #step = 0;
  constructor(readonly list: readonly Backend[], readonly first: number) {}

  next(): IteratorResult<Backend> {
    const n = this.list.length;
    if (this.#step === n) return { done: true, value: undefined };
    return { done: false, value: this.list[(this.first + this.#step++) % n] };
  }

  [Symbol.iterator](): IterableIterator<Backend> {
    return this;
  }
}

/** Yields `first`, then the rest of `list` in the given order, skipping `first`. */
export function* firstThen(first: Backend, list: Iterable<Backend>): Generator<Backend> {
  yield first;
  for (const b of list) if (b !== first) yield b;
}

/** Load relative to weight: in-flight requests per unit of effective weight. */
export function load(pool: Pool, b: Backend, now: number): number {
  return (b.inflight + 1) / pool.effectiveWeight(b, now);
}

/**
 * `build(backends)`, built again only when the pool's set of backends or their weights change,
 * not on health flips (those bump the pool's version too, so the set is compared only then).
 * For lookup tables that span unavailable backends too, so a backend going down moves only its
 * own keys.
 */
export function rebuiltOnChange<T>(
  pool: Pool,
  build: (backends: readonly Backend[]) => T,
): () => T {
  let value: T | undefined;
  let shape = "";
  let version = -1;
  return () => {
    if (value === undefined || version !== pool.version) {
      version = pool.version;
      const now = pool.backends.map((b) => `${b.id}=${b.weight}`).join(",");
      if (value === undefined || now !== shape) {
        value = build(pool.backends);
        shape = now;
      }
    }
    return value;
  };
}
