/** Active health checking: one async probe loop per backend, flipping state after consecutive results. */
import { statusMatcher } from "./config.ts";
import type { Logger } from "./log.ts";
import type { OutlierDetector } from "./outlier.ts";
import type { Backend, Pool } from "./pool.ts";

/** Settings of `health:`. */
export interface HealthOptions {
  path: string;
  interval: number;
  timeout: number;
  healthyThreshold: number;
  unhealthyThreshold: number;
  expectStatus: string;
}

/** Probes every backend of a pool on its own loop; loops follow backends as they are added and removed. */
export class HealthChecker {
  readonly #loops = new Map<Backend, AbortController>();
  #wake = new AbortController();
  readonly #streaks = new Map<Backend, { ok: number; fail: number; probed: boolean }>();
  #expect: (status: number) => boolean;
  /** Called after every probe (dashboard, metrics). */
  onProbe: ((backend: Backend) => void) | undefined;

  constructor(
    readonly pool: Pool,
    public options: HealthOptions,
    readonly log: Logger,
    readonly outlier: OutlierDetector,
  ) {
    this.#expect = statusMatcher(options.expectStatus);
  }

  /** Applies new settings; loops pick them up at their next probe. */
  configure(options: HealthOptions): void {
    this.options = options;
    // Wake sleeping loops so a shorter interval applies now, not after the old one.
    const wake = this.#wake;
    this.#wake = new AbortController();
    wake.abort();
    this.#expect = statusMatcher(options.expectStatus);
  }

  /** Starts loops for backends without one and stops loops of backends no longer in the pool. */
  sync(): void {
    const current = new Set(this.pool.backends);
    for (const [backend, controller] of this.#loops) {
      if (!current.has(backend)) {
        controller.abort();
        this.#loops.delete(backend);
        this.#streaks.delete(backend);
      }
    }
    for (const backend of current) {
      if (this.#loops.has(backend)) continue;
      const controller = new AbortController();
      this.#loops.set(backend, controller);
      this.#streaks.set(backend, { ok: 0, fail: 0, probed: false });
      this.#loop(backend, controller.signal);
    }
  }

  /** Stops every loop. */
  stop(): void {
    for (const controller of this.#loops.values()) controller.abort();
    this.#loops.clear();
  }

  /** Probes once now and applies the result (also used by tests and the admin API). */
  async check(backend: Backend): Promise<void> {
    const result = await this.#probe(backend);
    backend.lastProbe = result;
    this.#apply(backend, result.ok, result.error ?? `status ${result.status}`);
    this.onProbe?.(backend);
  }

  async #loop(backend: Backend, signal: AbortSignal): Promise<void> {
    while (!signal.aborted) {
      try {
        await this.check(backend);
      } catch (err) {
        this.log.error(`health check of ${backend.url} failed unexpectedly`, {
          error: String(err),
        });
      }
      await sleep(this.options.interval, AbortSignal.any([signal, this.#wake.signal]));
    }
  }

  async #probe(backend: Backend): Promise<{
    ok: boolean;
    status?: number;
    error?: string;
    time: number;
    durationMs: number;
  }> {
    const { path, timeout } = this.options;
    const started = performance.now();
    const signal = AbortSignal.timeout(timeout);
    try {
      const res = await fetch(new URL(path, backend.url), {
        signal,
        redirect: "manual",
        headers: { "user-agent": "sluice-health-check" },
      });
      await res.body?.cancel();
      const ok = this.#expect(res.status);
      return {
        ok,
        status: res.status,
        error: ok ? undefined : `health check returned status ${res.status}`,
        time: Date.now(),
        durationMs: performance.now() - started,
      };
    } catch (err) {
      const error = signal.aborted ? `health check timed out after ${timeout}ms` : probeError(err);
      return { ok: false, error, time: Date.now(), durationMs: performance.now() - started };
    }
  }

  #apply(backend: Backend, ok: boolean, cause: string): void {
    const streak = this.#streaks.get(backend);
    if (!streak) return;
    const first = !streak.probed;
    streak.probed = true;
    if (ok) {
      streak.ok++;
      streak.fail = 0;
    } else {
      streak.fail++;
      streak.ok = 0;
    }
    const { healthyThreshold, unhealthyThreshold } = this.options;
    if (first && ok && backend.healthy && backend.reason === "starting") {
      backend.reason = "health check passed";
    }
    // The first probe decides at once; later ones need a streak, so one blip changes nothing.
    if (!backend.healthy && ok && (first || streak.ok >= healthyThreshold)) {
      backend.healthy = true;
      this.pool.update(backend, "health check passed");
      this.log.info(`backend ${backend.url} is back up`);
    } else if (backend.healthy && !ok && (first || streak.fail >= unhealthyThreshold)) {
      backend.healthy = false;
      this.pool.update(backend, cause);
      this.log.warn(`backend ${backend.url} is down: ${cause}`);
    }
    if (ok && backend.ejectedUntil > 0 && streak.ok >= 1) {
      this.outlier.reinstate(backend, "health check passed");
    }
  }
}

/** A short cause for a failed probe: "connection refused", "connection reset", … */
function probeError(err: unknown): string {
  // fetch() fails with "fetch failed"; what went wrong is in the cause chain.
  let text = "";
  for (let e: unknown = err, depth = 0; e !== undefined && depth < 5; depth++) {
    text += (text ? ": " : "") + String((e as Error)?.message ?? e);
    e = (e as Error)?.cause;
  }
  if (/connection refused/i.test(text)) return "connection refused";
  if (/connection reset/i.test(text)) return "connection reset";
  if (/dns error|failed to lookup/i.test(text)) return "cannot resolve host";
  if (/connection closed|incomplete message|unexpected eof/i.test(text)) {
    return "connection closed";
  }
  return text.split("\n")[0].replace(/^fetch failed: /, "");
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const timer = setTimeout(done, ms);
    Deno.unrefTimer(timer);
    signal.addEventListener("abort", done, { once: true });
    function done() {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    }
  });
}
