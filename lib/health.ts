/** Active health checking: one async probe loop per backend, flipping state after consecutive results. */
import { type HealthConfig, statusMatcher } from "./config.ts";
import type { Logger } from "./log.ts";
import type { OutlierDetector } from "./outlier.ts";
import type { Backend, Pool, ProbeResult } from "./pool.ts";
import { probe } from "./upstream/probe.ts";

/** Settings of `health:`. */
export type HealthOptions = HealthConfig;

/** Probes every backend of a pool on its own loop; loops follow backends as they are added and removed. */
export class HealthChecker {
  readonly #loops = new Map<Backend, AbortController>();
  #wake = new AbortController();
  readonly #streaks = new Map<Backend, { ok: number; fail: number; probed: boolean }>();
  #expect: (status: number) => boolean;
  /** Called after every probe (dashboard, metrics). */
  onProbe: ((backend: Backend) => void) | undefined;
  /** Resolves once every backend present at the first `sync` has been probed once. */
  readonly firstRound: Promise<void>;
  #firstRoundDone: () => void = () => {};
  #firstRoundLeft: Set<Backend> | undefined;

  constructor(
    readonly pool: Pool,
    public options: HealthOptions,
    readonly log: Logger,
    readonly outlier: OutlierDetector,
  ) {
    this.#expect = statusMatcher(options.expectStatus);
    this.firstRound = new Promise((resolve) => this.#firstRoundDone = resolve);
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
    if (!this.#firstRoundLeft) {
      this.#firstRoundLeft = new Set(current);
      if (current.size === 0) this.#firstRoundDone();
    }
    for (const [backend, controller] of this.#loops) {
      if (!current.has(backend)) {
        controller.abort();
        this.#loops.delete(backend);
        this.#streaks.delete(backend);
        this.#probed(backend);
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

  /**
   * Probes once now and applies the result (also used by tests and the admin API); resolves
   * once a change of state has reached every worker thread.
   */
  async check(backend: Backend): Promise<void> {
    const result = await this.#probe(backend);
    const before = backend.state;
    this.#apply(backend, result);
    this.#probed(backend);
    this.onProbe?.(backend);
    if (backend.state !== before) await this.pool.settled();
  }

  #probed(backend: Backend): void {
    const left = this.#firstRoundLeft;
    if (left?.delete(backend) && left.size === 0) this.#firstRoundDone();
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

  async #probe(backend: Backend): Promise<ProbeResult> {
    const { path, timeout } = this.options;
    const started = performance.now();
    const outcome = await probe(backend.connections, path, backend.authority, timeout);
    const durationMs = performance.now() - started;
    if (outcome.status === undefined) {
      return { ok: false, error: outcome.error, time: Date.now(), durationMs };
    }
    const ok = this.#expect(outcome.status);
    return {
      ok,
      status: outcome.status,
      error: ok ? undefined : `health check returned status ${outcome.status}`,
      time: Date.now(),
      durationMs,
    };
  }

  #apply(backend: Backend, result: ProbeResult): void {
    const streak = this.#streaks.get(backend);
    if (!streak) return;
    const ok = result.ok;
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
    // The first probe decides at once; later ones need a streak, so one blip changes nothing.
    const wasHealthy = backend.healthy;
    let healthy = wasHealthy;
    if (!wasHealthy && ok && (first || streak.ok >= healthyThreshold)) healthy = true;
    else if (wasHealthy && !ok && (first || streak.fail >= unhealthyThreshold)) healthy = false;
    const cause = ok ? "health check passed" : result.error ?? `status ${result.status}`;
    this.pool.setHealth(backend, healthy, cause, result);
    const fields = { pool: this.pool.name };
    if (healthy && !wasHealthy) this.log.info(`backend ${backend.url} is back up`, fields);
    if (!healthy && wasHealthy) this.log.warn(`backend ${backend.url} is down: ${cause}`, fields);
    if (ok && backend.ejectedUntil > 0) this.outlier.reinstate(backend, "health check passed");
  }
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
