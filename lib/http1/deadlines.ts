/** Coarse per-request deadlines: one shared ticker instead of a timer per request. */

/** How often deadlines are checked (ms); a deadline fires at most about this late (or early). */
const TICK = 10;

// deno-lint-ignore no-explicit-any
const armed = new Set<Deadline<any>>();
let ticker: ReturnType<typeof setInterval> | undefined;
/** performance.now() at the latest tick: arming reads it instead of the clock while the ticker runs. */
let clock = 0;

/**
 * `performance.now()`, up to one tick stale while the ticker runs (requests are under way), for
 * timestamps that need no more: one call into the runtime fewer each.
 */
export function coarseNow(): number {
  return ticker === undefined ? performance.now() : clock;
}

/** A reusable deadline (one per connection): armed per request, so a request allocates no timer. */
export class Deadline<T = unknown> {
  at = 0;
  /** True once it fired, until armed again. */
  expired = false;
  /** In the ticker's set: a deadline re-armed before the next tick is not added again. */
  listed = false;

  /** `onExpire(subject)` runs when it fires: one shared function, no closure per deadline. */
  constructor(readonly onExpire: (subject: T) => void, readonly subject: T) {}

  /** Calls `onExpire` about `ms` from now unless disarmed first; re-arming moves the deadline. */
  arm(ms: number): void {
    // Up to one tick stale, so a deadline may fire a tick early: fine at this resolution, and
    // it spares a call into the runtime for each of the several deadlines a request arms.
    this.at = (ticker === undefined ? (clock = performance.now()) : clock) + ms;
    this.expired = false;
    if (!this.listed) {
      this.listed = true;
      armed.add(this);
    }
    if (ticker === undefined) {
      ticker = setInterval(tick, TICK);
      Deno.unrefTimer(ticker as unknown as number);
    }
  }

  /** Cancels the deadline (no-op if it fired already). */
  disarm(): void {
    // Left in the set until the next tick: a request disarms and re-arms several times, and
    // a field write is cheaper than taking it out of the set and putting it back.
    this.at = Infinity;
  }
}

function tick(): void {
  const now = clock = performance.now();
  for (const d of armed) {
    if (d.at <= now) {
      armed.delete(d);
      d.listed = false;
      d.expired = true;
      d.onExpire(d.subject);
    } else if (d.at === Infinity) {
      armed.delete(d);
      d.listed = false;
    }
  }
  if (armed.size === 0) {
    clearInterval(ticker);
    ticker = undefined;
  }
}
