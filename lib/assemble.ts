/**
 * Building a data plane from a configuration, the same way on the main thread (one worker)
 * and in each worker thread: pool runtimes over pools, the route table, and the listeners.
 */
import { cidrMatcher } from "./cidr.ts";
import {
  type Config,
  DEFAULT_POOL,
  type ListenConfig,
  listenersOf,
  type PoolConfig,
} from "./config.ts";
import type { Table } from "./dataplane.ts";
import { type Hooks, loadHooks } from "./hooks.ts";
import {
  type ClientTimeouts,
  type Handler,
  httpsRedirect,
  serve,
  type Server,
} from "./listener/server.ts";
import type { Logger } from "./log.ts";
import { formatHost } from "./net.ts";
import { PassiveHealth } from "./outlier.ts";
import type { Backend, Pool } from "./pool.ts";
import type { PoolRuntime, PoolSettings } from "./proxy.ts";
import { SlotQueue } from "./queue.ts";
import { RetryBudget } from "./retry_budget.ts";
import { Router } from "./router.ts";
import { createSelector } from "./select/mod.ts";
import { sticky } from "./select/sticky.ts";
import type { SharedCounters } from "./shared.ts";
import { loadCertificates, type LoadedCertificate } from "./tls/certificates.ts";

/** A pool's per-request settings. */
export function poolSettings(config: PoolConfig, pool: Pool): PoolSettings {
  const selector = createSelector(pool, config);
  return {
    selector: config.sticky ? sticky(selector, () => pool.backends) : selector,
    retries: config.retries,
    retryOn: new Set(config.retryOn),
    responseTimeout: config.timeouts.response,
    sticky: config.sticky,
  };
}

/** The request path's view of a pool; `onStreak` hears of a backend failing in a row. */
export function poolRuntime(
  config: PoolConfig,
  pool: Pool,
  counters: SharedCounters,
  onStreak: (backend: Backend, cause: string) => void,
): PoolRuntime {
  return {
    pool,
    settings: poolSettings(config, pool),
    budget: new RetryBudget(config.retryBudget, counters, pool.slot),
    queue: new SlotQueue(
      config.limits.maxPending,
      config.limits.queueTimeout,
      counters,
      pool.slot,
    ),
    passive: new PassiveHealth(config.outlier.consecutiveFailures, onStreak),
  };
}

/** Applies a pool's reloaded settings to its runtime in place. */
export function updateRuntime(rt: PoolRuntime, config: PoolConfig): void {
  rt.passive.threshold = config.outlier.consecutiveFailures;
  rt.budget.options = config.retryBudget;
  rt.queue.maxPending = config.limits.maxPending;
  rt.queue.timeout = config.limits.queueTimeout;
  rt.settings = poolSettings(config, rt.pool);
}

/** A pool's options for its backends' connections. */
export function backendOptions(config: PoolConfig) {
  return {
    maxConnections: config.limits.maxConnections ?? Infinity,
    idleTimeout: config.timeouts.idle,
    connectTimeout: config.timeouts.connect,
    tls: config.tls,
  };
}

/** What a route table is built from besides the config. */
export interface TableParts {
  runtimes: ReadonlyMap<string, PoolRuntime>;
  /** The hooks module, loaded (once per thread per version). */
  hooks: Hooks | undefined;
  /** The table in force, whose rate-limit tables carry over. */
  previous?: Table;
  /** Rate-limit tables to share, by route index (from the control plane's router). */
  limiters?: readonly (SharedArrayBuffer | undefined)[];
}

/** Builds the route table of `config`. */
export function buildTable(config: Config, parts: TableParts): Table {
  return {
    router: new Router(
      config.routes,
      config.pools[0]?.name ?? DEFAULT_POOL,
      parts.previous?.router,
      parts.limiters,
    ),
    pools: parts.runtimes,
    hooks: parts.hooks,
    trusted: cidrMatcher(config.trustedProxies),
    retryBuffer: config.retryBuffer,
    requestBuffering: config.requestBuffering,
  };
}

/** Loads `config.hooks` (if set) as version `version`. */
export function hooksOf(config: Config, version: number): Promise<Hooks | undefined> {
  return config.hooks ? loadHooks(config.hooks, version) : Promise.resolve(undefined);
}

/** Client-side timeouts of `config`. */
export function clientTimeouts(config: Config): ClientTimeouts {
  const { clientHeader, clientIdle, client, tunnel } = config.timeouts;
  return { header: clientHeader, idle: clientIdle, client, tunnel };
}

/** Request size limits of `config`. */
export function requestLimits(config: Config) {
  const l = config.limits;
  return {
    maxHeaderBytes: l.maxHeaderBytes,
    maxHeaders: l.maxHeaders,
    maxUriLength: l.maxUriLength,
    maxBodySize: l.maxBodySize ?? Infinity,
  };
}

/** What a listener was opened with, for reloads. */
interface ListenerState {
  /** The data plane's handler (a listener with `redirectHttps` answers with its own). */
  handler: Handler;
  log: Logger;
  /** The certificates in use (TLS listeners). */
  certificates: readonly LoadedCertificate[];
}

const states = new WeakMap<Server, ListenerState>();

/** `listen[i]` or `listen` (one mapping), for messages. */
function listenField(config: Pick<Config, "listen">, i: number): string {
  return Array.isArray(config.listen) ? `listen[${i}]` : "listen";
}

/**
 * Settings the listeners re-read on reload: timeouts, limits, trusted proxies, `redirectHttps`,
 * and TLS certificates. Certificates are read again from their files; when they changed, new
 * handshakes get the new ones while open connections keep theirs. A file that no longer loads
 * (it broke after the main thread checked it) keeps the old certificates, with an error logged.
 * Other listener changes (address, `tls` on or off, `minVersion`, `http2`, `proxyProtocol`)
 * take effect after a restart. Resolves once every handshake from then on gets the new
 * certificates (a replaced listener accepts for a short grace period after the swap).
 */
export function applyListenerSettings(servers: readonly Server[], config: Config): Promise<void> {
  const trusted = cidrMatcher(config.trustedProxies);
  const listeners = listenersOf(config);
  const swaps: Promise<void>[] = [];
  servers.forEach((s, i) => {
    s.timeouts = clientTimeouts(config);
    s.limits = requestLimits(config);
    s.trusted = trusted;
    const l = listeners[i];
    const state = states.get(s);
    if (!l || !state) return;
    s.handler = l.redirectHttps !== undefined ? httpsRedirect(l.redirectHttps) : state.handler;
    if (!l.tls || !s.tls) return;
    const field = `${listenField(config, i)}.tls.certificates`;
    const { certificates, problems } = loadCertificates(l.tls.certificates, { field });
    if (problems.length) {
      state.log.error(`${field}: not reloaded, keeping the certificates in use`, { problems });
      return;
    }
    if (sameCertificates(certificates, state.certificates)) return;
    let swapped: Promise<void>;
    try {
      swapped = s.tls.reload(certificates);
    } catch (err) {
      state.log.error(`${field}: not reloaded: ${(err as Error).message}`);
      return;
    }
    state.certificates = certificates;
    swaps.push(swapped.then(() => {
      state.log.info(`${field}: certificates reloaded`, {
        names: certificates.flatMap((c) => c.names),
      });
    }));
  });
  return Promise.all(swaps).then(() => {});
}

function sameCertificates(a: readonly LoadedCertificate[], b: readonly LoadedCertificate[]) {
  return a.length === b.length && a.every((c, i) => c.cert === b[i].cert && c.key === b[i].key);
}

/** Set once the missing TCP_NODELAY on TLS listeners has been reported (by the first thread). */
let noDelayWarned = false;

/**
 * Opens every listener of `config` serving `handler`. `ports` replaces the configured ports
 * (workers after the first take the ports the first one got for port 0); `reusePort` lets
 * several workers listen on the same port. TLS listeners load their certificate files here.
 */
export function openListeners(
  config: Config,
  handler: Handler,
  log: Logger,
  options: { reusePort?: boolean; ports?: readonly number[] } = {},
): Server[] {
  const servers: Server[] = [];
  const listeners = listenersOf(config);
  const trusted = cidrMatcher(config.trustedProxies);
  try {
    listeners.forEach((l, i) => {
      let certificates: LoadedCertificate[] = [];
      if (l.tls) {
        const field = `${listenField(config, i)}.tls.certificates`;
        const loaded = loadCertificates(l.tls.certificates, { field });
        if (loaded.problems.length) throw new Error(loaded.problems.join("; "));
        // Warnings (expired, no names) only once per process: not again in every worker.
        if (options.ports === undefined) { for (const w of loaded.warnings) log.warn(w); }
        certificates = loaded.certificates;
      }
      const server = serve({
        hostname: l.host,
        port: options.ports?.[i] ?? l.port,
        reusePort: options.reusePort,
        timeouts: clientTimeouts(config),
        limits: requestLimits(config),
        proxyProtocol: l.proxyProtocol,
        trusted,
        tls: l.tls ? { certificates, minVersion: l.tls.minVersion } : undefined,
        http2: l.http2 ?? l.tls !== undefined,
        handler: l.redirectHttps !== undefined ? httpsRedirect(l.redirectHttps) : handler,
        onError(err) {
          log.error("request handling failed", { error: String(err) });
        },
      });
      servers.push(server);
      states.set(server, { handler, log, certificates });
      const noDelay = server.tls?.noDelay;
      if (noDelay !== undefined && noDelay !== true && !noDelayWarned && !options.ports) {
        noDelayWarned = true;
        log.warn(
          `TLS listener ${formatHost(l.host)}:${server.addr.port}: TCP_NODELAY not set ` +
            `(${noDelay}): a response written in several pieces may wait ~40 ms for the ` +
            `client's delayed ACK; run with --allow-ffi`,
        );
      }
    });
  } catch (err) {
    for (const s of servers) s.close();
    throw listenError(err, listeners[servers.length]);
  }
  return servers;
}

/** A listen failure that names the address and says what to do. */
export function listenError(
  err: unknown,
  l: Pick<ListenConfig, "host" | "port"> | undefined,
): Error {
  const where = l ? `${formatHost(l.host)}:${l.port}` : "the listener";
  if (err instanceof Deno.errors.AddrInUse) {
    return new Error(`cannot listen on ${where}: address already in use`);
  }
  if (err instanceof Deno.errors.NotCapable) {
    return new Error(`cannot listen on ${where}: not allowed (run Deno with --allow-net)`);
  }
  if (err instanceof Deno.errors.PermissionDenied) {
    return new Error(
      `cannot listen on ${where}: permission denied (ports below 1024 need CAP_NET_BIND_SERVICE, ` +
        `and Deno needs --allow-net)`,
    );
  }
  if (err instanceof Deno.errors.AddrNotAvailable) {
    return new Error(`cannot listen on ${where}: address not available on this machine`);
  }
  return new Error(`cannot listen on ${where}: ${(err as Error).message}`);
}
