/** Coarse per-request deadlines: one shared ticker instead of a timer per request. */

/** How often deadlines are checked (ms); response timeouts fire at most this late. */
const TICK = 10;

const armed = new Set<Deadline>();
let ticker: ReturnType<typeof setInterval> | undefined;

/** A reusable deadline (one per connection): armed per request, so a request allocates no timer. */
export class Deadline {
  at = 0;
  /** True once it fired, until armed again. */
  expired = false;

  constructor(readonly onExpire: () => void) {}

  /** Calls `onExpire` about `ms` from now unless disarmed first; re-arming moves the deadline. */
  arm(ms: number): void {
    this.at = performance.now() + ms;
    this.expired = false;
    armed.add(this);
    if (ticker === undefined) {
      ticker = setInterval(tick, TICK);
      Deno.unrefTimer(ticker as unknown as number);
    }
  }

  /** Cancels the deadline (no-op if it fired already). */
  disarm(): void {
    armed.delete(this);
  }
}

function tick(): void {
  const now = performance.now();
  for (const d of armed) {
    if (d.at <= now) {
      armed.delete(d);
      d.expired = true;
      d.onExpire();
    }
  }
  if (armed.size === 0) {
    clearInterval(ticker);
    ticker = undefined;
  }
}
