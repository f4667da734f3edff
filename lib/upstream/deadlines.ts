/** Coarse per-request deadlines: one shared ticker instead of a timer per request. */

/** How often deadlines are checked (ms); response timeouts fire at most this late. */
const TICK = 10;

/** A pending deadline; `expired` turns true when it fired. */
export interface Deadline {
  at: number;
  expired: boolean;
  onExpire: () => void;
}

const pending = new Set<Deadline>();
let ticker: ReturnType<typeof setInterval> | undefined;

function tick(): void {
  const now = performance.now();
  for (const d of pending) {
    if (d.at <= now) {
      pending.delete(d);
      d.expired = true;
      d.onExpire();
    }
  }
  if (pending.size === 0) {
    clearInterval(ticker);
    ticker = undefined;
  }
}

/** Calls `onExpire` about `ms` from now unless cancelled first. */
export function deadline(ms: number, onExpire: () => void): Deadline {
  const d: Deadline = { at: performance.now() + ms, expired: false, onExpire };
  pending.add(d);
  if (ticker === undefined) {
    ticker = setInterval(tick, TICK);
    Deno.unrefTimer(ticker as unknown as number);
  }
  return d;
}

/** Cancels a deadline (no-op if it fired already). */
export function cancel(d: Deadline): void {
  pending.delete(d);
}
