/** Passive health checking: eject a backend after consecutive failures seen on real traffic. */
import type { Logger } from "./log.ts";
import type { Backend, Pool } from "./pool.ts";

/** Settings of `outlier:`. */
export interface OutlierOptions {
  /** Failures in a row that eject a backend (0 turns detection off). */
  consecutiveFailures: number;
  /** Ejection time, multiplied by the number of times the backend was ejected (ms). */
  baseEjection: number;
  /** Cap on one ejection (ms). */
  maxEjection: number;
  /** Never eject more than this share of the pool (percent). */
  maxEjectionPercent: number;
}

/** Counts failures per backend and ejects, within the limit on how much of the pool may be out. */
export class OutlierDetector {
  /** Called on each ejection (metrics). */
  onEject: ((backend: Backend) => void) | undefined;
  /** The timer that ends each backend's current ejection. */
  readonly #timers = new Map<Backend, ReturnType<typeof setTimeout>>();

  constructor(readonly pool: Pool, public options: OutlierOptions, readonly log: Logger) {}

  /** A request to `backend` succeeded. */
  success(backend: Backend): void {
    backend.consecutiveFailures = 0;
  }

  /** A request to `backend` failed (connect error, reset, timeout or 5xx). */
  failure(backend: Backend, cause: string): void {
    const { consecutiveFailures } = this.options;
    if (consecutiveFailures === 0) return;
    if (++backend.consecutiveFailures < consecutiveFailures || backend.state !== "up") return;
    const backends = this.pool.backends;
    const ejected = backends.filter((b) => b.state === "ejected").length;
    if (((ejected + 1) * 100) / backends.length > this.options.maxEjectionPercent) {
      this.log.debug(`not ejecting ${backend.url}: maxEjectionPercent reached`);
      return;
    }
    backend.ejections++;
    backend.consecutiveFailures = 0;
    const duration = Math.min(
      this.options.baseEjection * backend.ejections,
      Math.max(this.options.maxEjection, this.options.baseEjection),
    );
    backend.ejectedUntil = Date.now() + duration;
    this.pool.update(
      backend,
      `ejected for ${duration}ms after ${consecutiveFailures} consecutive failures: ${cause}`,
    );
    this.log.warn(`backend ${backend.url} is ejected for ${duration}ms: ${cause}`);
    this.onEject?.(backend);
    // One timer per backend: an earlier ejection's timer must not end this one early.
    this.#clearTimer(backend);
    const timer = setTimeout(() => {
      this.#timers.delete(backend);
      this.reinstate(backend, "ejection time over");
    }, duration);
    Deno.unrefTimer(timer);
    this.#timers.set(backend, timer);
  }

  /** Ends an ejection early or on time. */
  reinstate(backend: Backend, reason: string): void {
    this.#clearTimer(backend);
    if (backend.ejectedUntil === 0) return;
    backend.ejectedUntil = 0;
    const wasEjected = backend.state === "ejected";
    this.pool.update(backend, reason);
    if (wasEjected && backend.state === "up") {
      this.log.info(`backend ${backend.url} is back in rotation: ${reason}`);
    }
  }

  /** Cancels every pending ejection timer (shutdown); ejected backends stay ejected. */
  stop(): void {
    for (const timer of this.#timers.values()) clearTimeout(timer);
    this.#timers.clear();
  }

  #clearTimer(backend: Backend): void {
    const timer = this.#timers.get(backend);
    if (timer === undefined) return;
    clearTimeout(timer);
    this.#timers.delete(backend);
  }
}
