/**
 * Passive health checking: failures in a row, counted on real traffic by whichever worker saw
 * them, eject a backend for a while. Counting is in shared memory (`PassiveHealth`, data
 * plane); the decision to eject is made in one place (`OutlierDetector`, control plane).
 */
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

/** Counts each request's outcome per backend; reports a streak long enough to eject. */
export class PassiveHealth {
  constructor(
    public threshold: number,
    /** Told when a backend that is up reaches `threshold` failures in a row. */
    readonly onStreak: (backend: Backend, cause: string) => void,
  ) {}

  /** A request to `backend` succeeded. */
  success(backend: Backend): void {
    backend.resetFailures();
  }

  /** A request to `backend` failed (connect error, reset, timeout or 5xx). */
  failure(backend: Backend, cause: string): void {
    if (this.threshold === 0) return;
    if (backend.addFailure() >= this.threshold && backend.state === "up") {
      this.onStreak(backend, cause);
    }
  }
}

/** Ejects backends reported by {@linkcode PassiveHealth}, within the share of the pool that may be out. */
export class OutlierDetector {
  /** Called on each ejection (metrics). */
  onEject: ((backend: Backend) => void) | undefined;
  /** The timer that ends each backend's current ejection. */
  readonly #timers = new Map<Backend, ReturnType<typeof setTimeout>>();

  constructor(readonly pool: Pool, public options: OutlierOptions, readonly log: Logger) {}

  /** Ejects `backend` after a streak of failures, unless too much of the pool is out already. */
  eject(backend: Backend, cause: string): void {
    if (backend.state !== "up" || this.options.consecutiveFailures === 0) return;
    const backends = this.pool.backends;
    const ejected = backends.filter((b) => b.state === "ejected").length;
    if (((ejected + 1) * 100) / backends.length > this.options.maxEjectionPercent) {
      this.log.debug(`not ejecting ${backend.url}: maxEjectionPercent reached`);
      return;
    }
    const duration = Math.min(
      this.options.baseEjection * (backend.ejections + 1),
      Math.max(this.options.maxEjection, this.options.baseEjection),
    );
    const threshold = this.options.consecutiveFailures;
    this.pool.eject(
      backend,
      Date.now() + duration,
      `ejected for ${duration}ms after ${threshold} consecutive failures: ${cause}`,
    );
    this.log.warn(`backend ${backend.url} is ejected for ${duration}ms: ${cause}`, {
      pool: this.pool.name,
    });
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
    const wasEjected = backend.state === "ejected";
    this.pool.reinstate(backend, reason);
    if (wasEjected && (backend.state as string) === "up") {
      this.log.info(`backend ${backend.url} is back in rotation: ${reason}`, {
        pool: this.pool.name,
      });
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
