/**
 * DNS discovery: keeps each target's endpoints current by resolving it at start, then again
 * when its TTL runs out (within `minInterval`..`interval`), and reports only changes. A failed
 * lookup keeps the last good answer: discovery never empties a pool.
 */
import { DnsError } from "./client.ts";
import { type DnsTarget, type Endpoint, resolveTarget } from "./dns.ts";

export { DnsError, type DnsErrorKind, systemNameServers } from "./client.ts";
export { formatNameServer, type NameServer, normalizeName, parseNameServer } from "./names.ts";
export {
  compareEndpoints,
  type DiscoveryType,
  type DnsTarget,
  type Endpoint,
  endpointAddress,
  type Resolution,
  resolveTarget,
  srvEndpoints,
} from "./dns.ts";

/** How discovery runs. */
export interface DiscoveryOptions<T extends DnsTarget> {
  /**
   * The longest time between two lookups of a name (ms); a shorter TTL means sooner.
   * @default 30000
   */
  interval?: number;
  /**
   * The shortest time between two lookups of a name (ms), however short its TTL (TTL 0 is
   * common: dnsmasq's default, Consul's).
   * @default 1000
   */
  minInterval?: number;
  /**
   * `host:port` of the name server.
   * @default the system's (resolv.conf)
   */
  nameServer?: string;
  /**
   * How long to wait for one answer (ms).
   * @default 2000
   */
  timeout?: number;
  /**
   * Tries per question before a lookup fails.
   * @default 2
   */
  attempts?: number;
  /**
   * Called with a target's full, sorted, non-empty endpoint list whenever it differs from the
   * last one reported (the first success always reports). If it throws, the error goes to
   * `onError` and the same list is reported again after the next lookup.
   */
  onUpdate(target: T, endpoints: readonly Endpoint[]): void;
  /**
   * Called for every failed lookup (a {@linkcode DnsError}: its `kind` says why) and for an
   * error thrown by `onUpdate`. The last good endpoints stay in effect.
   */
  onError?(target: T, error: Error): void;
}

/** Running discovery. */
export interface Discovery<T extends DnsTarget> {
  /** Settles once every target's first lookup has succeeded or failed (or discovery stopped). */
  readonly ready: Promise<void>;
  /** The endpoints last reported for `target`; undefined until its first successful lookup. */
  endpoints(target: T): readonly Endpoint[] | undefined;
  /** Consecutive failed lookups of `target` (0 after a success). */
  failures(target: T): number;
  /** Stops: in-flight lookups are abandoned, no timer is left, no callback runs afterwards. */
  stop(): Promise<void>;
  [Symbol.asyncDispose](): Promise<void>;
}

interface TargetState {
  endpoints: readonly Endpoint[] | undefined;
  key: string;
  failures: number;
}

/**
 * Starts resolving every target. Lookups of one target never overlap; targets run
 * independently. After a success the next lookup is due at the answer's smallest TTL, clamped
 * to `minInterval`..`interval`; after a failure, at `minInterval` doubled with each failure in a
 * row, up to `interval`.
 */
export function startDiscovery<T extends DnsTarget>(
  targets: readonly T[],
  options: DiscoveryOptions<T>,
): Discovery<T> {
  const interval = options.interval ?? 30_000;
  const minInterval = Math.min(options.minInterval ?? 1_000, interval);
  const abort = new AbortController();
  const states = new Map<T, TargetState>();
  const timers = new Set<{ timer: ReturnType<typeof setTimeout>; wake: () => void }>();
  let stopped = false;

  const report = (target: T, err: unknown) => {
    try {
      options.onError?.(target, err instanceof Error ? err : new Error(String(err)));
    } catch { /* a failing error handler must not stop discovery */ }
  };

  const sleep = (ms: number) =>
    new Promise<void>((resolve) => {
      const entry = {
        timer: setTimeout(() => {
          timers.delete(entry);
          resolve();
        }, ms),
        wake: resolve,
      };
      timers.add(entry);
    });

  const run = async (target: T, state: TargetState, settled: () => void) => {
    while (!stopped) {
      let delay: number;
      try {
        const { endpoints, ttl } = await resolveTarget(target, {
          nameServer: options.nameServer,
          timeout: options.timeout,
          attempts: options.attempts,
          signal: abort.signal,
        });
        if (stopped) break;
        state.failures = 0;
        delay = Math.min(interval, Math.max(minInterval, ttl * 1000));
        const key = endpointsKey(endpoints);
        if (key !== state.key) {
          try {
            options.onUpdate(target, endpoints);
            state.endpoints = endpoints;
            state.key = key;
          } catch (err) {
            report(target, err);
          }
        }
      } catch (err) {
        if (stopped) break;
        state.failures++;
        report(target, asDnsError(target, err));
        delay = Math.min(interval, minInterval * 2 ** Math.min(state.failures - 1, 30));
      }
      settled();
      await sleep(delay);
    }
    settled();
  };

  const loops: Promise<void>[] = [];
  const firsts: Promise<void>[] = [];
  for (const target of targets) {
    const state: TargetState = { endpoints: undefined, key: "", failures: 0 };
    states.set(target, state);
    const first = Promise.withResolvers<void>();
    firsts.push(first.promise);
    loops.push(run(target, state, first.resolve));
  }
  const ready = Promise.all(firsts).then(() => {});

  const stop = async () => {
    stopped = true;
    abort.abort(new DOMException("discovery stopped", "AbortError"));
    for (const t of timers) {
      clearTimeout(t.timer);
      t.wake();
    }
    timers.clear();
    await Promise.all(loops);
  };

  return {
    ready,
    endpoints: (target) => states.get(target)?.endpoints,
    failures: (target) => states.get(target)?.failures ?? 0,
    stop,
    [Symbol.asyncDispose]: stop,
  };
}

/** Identifies an endpoint list (sorted by resolveTarget), to report changes only. */
function endpointsKey(endpoints: readonly Endpoint[]): string {
  return endpoints.map((e) => `${e.host}|${e.port}|${e.priority}|${e.weight}`).join(",");
}

/** Errors that are not already a DnsError (an invalid name, say) as `config` ones. */
function asDnsError(target: DnsTarget, err: unknown): DnsError {
  if (err instanceof DnsError) return err;
  return new DnsError("config", target.dns, target.type ?? "A", (err as Error).message ?? err);
}
