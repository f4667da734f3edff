/** Passive health checking: eject a backend after consecutive failures seen on real traffic. */
import type { Logger } from "./log.ts";
import type { Backend, Pool } from "./pool.ts";

/** Settings of `outlier:`. */
export interface OutlierOptions {
  /** Failures in a row that eject a backend (0 turns detection off). */
  consecutiveFailures: number;
  /** Ejection time, multiplied by the number of times the backend was ejected (ms). */
  baseEjection: number;
  /** Never eject more than this share of the pool (percent). */
  maxEjectionPercent: number;
}

/** Counts failures per backend and ejects, within the limit on how much of the pool may be out. */
export class OutlierDetector {
  /** Called on each ejection (metrics). */
  onEject: ((backend: Backend) => void) | undefined;

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
    const duration = this.options.baseEjection * backend.ejections;
    backend.ejectedUntil = Date.now() + duration;
    this.pool.update(
      backend,
      `ejected for ${duration}ms after ${consecutiveFailures} consecutive failures: ${cause}`,
    );
    this.log.warn(`backend ${backend.url} is ejected for ${duration}ms: ${cause}`);
    this.onEject?.(backend);
    const timer = setTimeout(() => this.reinstate(backend, "ejection time over"), duration);
    Deno.unrefTimer(timer);
  }

  /** Ends an ejection early or on time. */
  reinstate(backend: Backend, reason: string): void {
    if (backend.ejectedUntil === 0) return;
    backend.ejectedUntil = 0;
    const wasEjected = backend.state === "ejected";
    this.pool.update(backend, reason);
    if (wasEjected && backend.state === "up") {
      this.log.info(`backend ${backend.url} is back in rotation: ${reason}`);
    }
  }
}
