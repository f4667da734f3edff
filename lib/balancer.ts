/**
 * The control plane: owns the configuration, the pools and their backends' state, health
 * checks, outlier decisions, reload and shutdown, and runs the request path (the data plane)
 * on the listeners.
 */
import { AccessLog } from "./access_log.ts";
import { cidrMatcher } from "./cidr.ts";
import {
  type BackendConfig,
  type Config,
  DEFAULT_POOL,
  listenersOf,
  type PoolConfig,
} from "./config.ts";
import { DataPlane, type Table } from "./dataplane.ts";
import { HealthChecker } from "./health.ts";
import { type Hooks, loadHooks } from "./hooks.ts";
import type { Logger } from "./log.ts";
import { formatHost } from "./net.ts";
import { OutlierDetector, PassiveHealth } from "./outlier.ts";
import { type Backend, Pool } from "./pool.ts";
import { type ClientTimeouts, serve, type Server } from "./listener/server.ts";
import type { PoolRuntime, PoolSettings, ProxyObserver, RequestRecord } from "./proxy.ts";
import { SlotQueue } from "./queue.ts";
import { RetryBudget } from "./retry_budget.ts";
import { Router } from "./router.ts";
import { createSelector } from "./select/mod.ts";
import { sticky } from "./select/sticky.ts";
import { SharedCounters } from "./shared.ts";
import { Stats } from "./stats.ts";
import { backendId } from "./net.ts";

/** A pool and the control plane's work on it. */
export interface PoolControl {
  readonly pool: Pool;
  config: PoolConfig;
  readonly health: HealthChecker;
  readonly outlier: OutlierDetector;
  /** The request path's view: settings, budget, queue. */
  readonly runtime: PoolRuntime;
}

/** A running balancer. */
export interface Balancer {
  /** The first traffic listener's address. */
  readonly addr: Deno.NetAddr;
  /** Every traffic listener's address, in `listen` order. */
  readonly addrs: readonly Deno.NetAddr[];
  /** Every pool, in configuration order. */
  readonly pools: ReadonlyMap<string, PoolControl>;
  /** The default pool (top-level `backends`), or the first pool. */
  readonly pool: Pool;
  /** The default pool's health checker. */
  readonly health: HealthChecker;
  readonly stats: Stats;
  readonly log: Logger;
  /** The configuration in force. */
  readonly config: Config;
  /** 1 at start, +1 per applied reload. */
  readonly version: number;
  readonly startedAt: number;
  /** True once the listeners are open and the first health round left a backend up; false while draining. */
  readonly ready: boolean;
  /** Adds a listener told about every finished request, upstream failure and retry; returns its remover. */
  addObserver(observer: ProxyObserver): () => void;
  /** Applies a validated config: pools, routes, backends and settings swapped atomically. */
  reload(config: Config): Promise<void>;
  /** Adds a backend at run time. Throws if its id or URL exists in the pool. */
  addBackend(entry: BackendConfig, pool?: string): Backend;
  /** Removes a backend; in-flight requests finish. Returns false if unknown. */
  removeBackend(id: string, pool?: string): boolean;
  /** Stops new requests to a backend; resolves when its last in-flight request ends. */
  drain(id: string, pool?: string): Promise<void>;
  /** Returns a drained or disabled backend to service. */
  enable(id: string, pool?: string): void;
  /** Takes a backend out of service at once. */
  disable(id: string, pool?: string): void;
  /** Changes a backend's weight. */
  setWeight(id: string, weight: number, pool?: string): void;
  /** Stops accepting, waits for in-flight requests (up to timeouts.drain), then stops everything. */
  shutdown(): Promise<void>;
  /** Resolves once the balancer has stopped. */
  readonly finished: Promise<void>;
}

/** Thrown by admin operations on a backend id (or pool) that does not exist. */
export class UnknownBackend extends Error {
  constructor(id: string, pool?: string) {
    super(
      pool === undefined ? `no backend with id ${id}` : `no backend with id ${id} in pool ${pool}`,
    );
    this.name = "UnknownBackend";
  }
}

/** Thrown when an operation names a pool that does not exist. */
export class UnknownPool extends Error {
  constructor(name: string) {
    super(`no pool named ${name}`);
    this.name = "UnknownPool";
  }
}

function poolSettings(config: PoolConfig, pool: Pool): PoolSettings {
  const selector = createSelector(pool, config);
  return {
    selector: config.sticky ? sticky(selector, () => pool.backends) : selector,
    retries: config.retries,
    retryOn: new Set(config.retryOn),
    responseTimeout: config.timeouts.response,
    sticky: config.sticky,
  };
}

function clientTimeouts(config: Config): ClientTimeouts {
  const { clientHeader, clientIdle, client } = config.timeouts;
  return { header: clientHeader, idle: clientIdle, client };
}

function requestLimits(config: Config) {
  const l = config.limits;
  return {
    maxHeaderBytes: l.maxHeaderBytes,
    maxHeaders: l.maxHeaders,
    maxUriLength: l.maxUriLength,
    maxBodySize: l.maxBodySize ?? Infinity,
  };
}

/** Starts the traffic listeners, health checks and background work for `config`. */
export async function startBalancer(config: Config, log: Logger): Promise<Balancer> {
  const counters = new SharedCounters();
  let current = config;
  let version = 1;
  let hooksVersion = 0;
  const pools = new Map<string, PoolControl>();
  const stats = new Stats(() => [...pools.values()].map((c) => c.pool), () => version);

  const makePool = (pc: PoolConfig, started: boolean): PoolControl => {
    const pool = new Pool(pc.name, backendOptions(pc), counters, counters.allocatePool());
    pool.slowStart = pc.slowStart;
    for (const entry of pc.backends) {
      if (entry.url !== undefined) pool.add(entry, { started });
    }
    const outlier = new OutlierDetector(pool, pc.outlier, log);
    outlier.onEject = (b) => stats.ejections.inc([pool.name, b.id]);
    const health = new HealthChecker(pool, pc.health, log, outlier);
    const runtime: PoolRuntime = {
      pool,
      settings: poolSettings(pc, pool),
      budget: new RetryBudget(pc.retryBudget, counters.poolInts, pool.slot),
      queue: new SlotQueue(
        pc.limits.maxPending,
        pc.limits.queueTimeout,
        counters.poolInts,
        pool.slot,
      ),
      passive: new PassiveHealth(
        pc.outlier.consecutiveFailures,
        (b, cause) => outlier.eject(b, cause),
      ),
    };
    return { pool, config: pc, health, outlier, runtime };
  };
  for (const pc of config.pools) pools.set(pc.name, makePool(pc, true));

  const loadTable = async (next: Config, previous?: Table): Promise<Table> => {
    let hooks: Hooks | undefined;
    if (next.hooks) hooks = await loadHooks(next.hooks, ++hooksVersion);
    return {
      router: new Router(next.routes, next.pools[0]?.name ?? DEFAULT_POOL, previous?.router),
      pools: new Map([...pools].map(([name, c]) => [name, c.runtime])),
      hooks,
      trusted: cidrMatcher(next.trustedProxies),
      retryBuffer: next.retryBuffer,
      requestBuffering: next.requestBuffering,
    };
  };

  let accessLog = config.accessLog ? new AccessLog(config.accessLog) : undefined;
  const extra: ProxyObserver[] = [];
  const accessObserver: ProxyObserver = {
    request: (r: RequestRecord) => accessLog?.write(r),
    upstreamError() {},
    retry() {},
  };
  let observers: readonly ProxyObserver[] = [];
  const listen = () => {
    // Metrics first, then added observers, then the access log.
    observers = [stats, ...extra, ...(accessLog ? [accessObserver] : [])];
  };
  listen();

  const dataPlane = new DataPlane(await loadTable(config), { log, observers: () => observers });

  const servers: Server[] = [];
  const trusted = () => cidrMatcher(current.trustedProxies);
  try {
    for (const l of listenersOf(config)) {
      if (l.tls) throw new Error("TLS listeners are not available yet");
      servers.push(serve({
        hostname: l.host,
        port: l.port,
        timeouts: clientTimeouts(config),
        limits: requestLimits(config),
        proxyProtocol: l.proxyProtocol,
        trusted: trusted(),
        handler: dataPlane.handle,
        onError(err) {
          log.error("request handling failed", { error: String(err) });
        },
      }));
    }
  } catch (err) {
    for (const s of servers) s.close();
    throw listenError(err, listenersOf(config)[servers.length]);
  }
  const addrs = servers.map((s) => s.addr);
  stats.clientConnections = () => servers.reduce((n, s) => n + s.connections, 0);
  for (const addr of addrs) {
    log.info(`sluice listening on http://${formatHost(addr.hostname)}:${addr.port}`, {
      strategy: config.pools[0]?.strategy,
      pools: pools.size,
      backends: [...pools.values()].reduce((n, c) => n + c.pool.backends.length, 0),
    });
  }
  for (const c of pools.values()) c.health.sync();

  let draining = false;
  let healthyOnce = false;
  const firstRound = Promise.all([...pools.values()].map((c) => c.health.firstRound));
  firstRound.then(() => healthyOnce = true);

  const control = (pool?: string): PoolControl => {
    if (pool === undefined) return [...pools.values()][0];
    const c = pools.get(pool);
    if (!c) throw new UnknownPool(pool);
    return c;
  };
  const find = (id: string, pool?: string): [Backend, PoolControl] => {
    const c = control(pool);
    const backend = c.pool.get(id);
    if (!backend) throw new UnknownBackend(id, pool);
    return [backend, c];
  };

  const stopped = Promise.withResolvers<void>();
  let stopping: Promise<void> | undefined;
  const balancer: Balancer = {
    addr: addrs[0],
    addrs,
    pools,
    get pool() {
      return control().pool;
    },
    get health() {
      return control().health;
    },
    stats,
    log,
    get config() {
      return current;
    },
    get version() {
      return version;
    },
    get ready() {
      return healthyOnce && !draining &&
        [...pools.values()].some((c) => c.pool.backends.some((b) => b.available));
    },
    startedAt: stats.startedAt,
    finished: Promise.race([
      Promise.all(servers.map((s) => s.finished)).then(() => {}),
      stopped.promise,
    ]),

    async reload(next: Config) {
      // Everything that can fail comes first, so a rejected reload changes nothing.
      const table = await loadTable(next, dataPlane.table);
      for (const pc of next.pools) {
        const c = pools.get(pc.name);
        if (c) reconcilePool(c, pc, log);
        else {
          const created = makePool(pc, false);
          pools.set(pc.name, created);
          created.health.sync();
          log.info(`pool ${pc.name} added`, { backends: created.pool.backends.length });
        }
      }
      const names = new Set(next.pools.map((p) => p.name));
      for (const [name, c] of pools) {
        if (names.has(name)) continue;
        // In-flight requests finish on the pool they started on; it closes once they have.
        pools.delete(name);
        c.health.stop();
        c.outlier.stop();
        Promise.all(c.pool.backends.map((b) => b.idle())).then(() => c.pool.close());
        log.info(`pool ${name} removed`);
      }
      for (const s of servers) {
        s.timeouts = clientTimeouts(next);
        s.limits = requestLimits(next);
        s.trusted = cidrMatcher(next.trustedProxies);
      }
      log.configure(next.log.level, next.log.format);
      if (JSON.stringify(next.accessLog) !== JSON.stringify(current.accessLog)) {
        const old = accessLog;
        accessLog = next.accessLog ? new AccessLog(next.accessLog) : undefined;
        old?.close();
        listen();
      }
      dataPlane.table = { ...table, pools: new Map([...pools].map(([n, c]) => [n, c.runtime])) };
      if (JSON.stringify(next.listen) !== JSON.stringify(current.listen)) {
        log.warn("listen address changes take effect after a restart");
      }
      if (JSON.stringify(next.admin) !== JSON.stringify(current.admin)) {
        log.warn("admin listener changes take effect after a restart");
      }
      if (next.workers !== current.workers) {
        log.warn("workers changes take effect after a restart");
      }
      current = next;
      version++;
    },

    addObserver(observer) {
      extra.push(observer);
      listen();
      return () => {
        const i = extra.indexOf(observer);
        if (i !== -1) extra.splice(i, 1);
        listen();
      };
    },
    addBackend(entry, pool) {
      const c = control(pool);
      const backend = c.pool.add(entry);
      c.health.sync();
      log.info(`backend ${backend.url} added`, { pool: c.pool.name });
      return backend;
    },
    removeBackend(id, pool) {
      const c = control(pool);
      const backend = c.pool.remove(id);
      if (!backend) return false;
      c.health.sync();
      log.info(`backend ${backend.url} removed`, { pool: c.pool.name });
      return true;
    },
    drain(id, pool) {
      const [backend, c] = find(id, pool);
      c.pool.setAdmin(backend, "draining", "draining by operator");
      log.info(`backend ${backend.url} is draining`, {
        pool: c.pool.name,
        inflight: backend.inflight,
      });
      return backend.idle().then(() => {
        if (backend.state === "draining") {
          log.info(`backend ${backend.url} is drained`, { pool: c.pool.name });
        }
      });
    },
    enable(id, pool) {
      const [backend, c] = find(id, pool);
      c.pool.setAdmin(backend, "enabled", "enabled by operator");
    },
    disable(id, pool) {
      const [backend, c] = find(id, pool);
      c.pool.setAdmin(backend, "disabled", "disabled by operator");
    },
    setWeight(id, weight, pool) {
      const [backend, c] = find(id, pool);
      c.pool.setWeight(backend, weight);
    },

    shutdown() {
      stopping ??= (async () => {
        draining = true;
        log.info("shutting down: draining in-flight requests", {
          timeout: `${current.timeouts.drain}ms`,
        });
        for (const c of pools.values()) {
          c.health.stop();
          c.outlier.stop();
        }
        let timer: ReturnType<typeof setTimeout> | undefined;
        const late = await Promise.race([
          Promise.all(servers.map((s) => s.shutdown())).then(() => false),
          new Promise<boolean>((resolve) => {
            timer = setTimeout(() => resolve(true), current.timeouts.drain);
          }),
        ]);
        clearTimeout(timer);
        if (late) {
          log.warn("drain timeout reached, closing remaining connections");
          for (const s of servers) s.close();
        }
        for (const c of pools.values()) c.pool.close();
        await accessLog?.close();
        log.info("stopped");
        stopped.resolve();
      })();
      return stopping;
    },
  };
  return balancer;
}

function backendOptions(pc: PoolConfig) {
  return {
    maxConnections: pc.limits.maxConnections ?? Infinity,
    idleTimeout: pc.timeouts.idle,
    connectTimeout: pc.timeouts.connect,
    tls: pc.tls,
  };
}

/**
 * Applies a pool's new settings in place: backends the file no longer lists are removed, new
 * ones added, weights and limits updated; backends added through the admin API stay, and an
 * operator's drain or disable stays on backends that remain.
 */
function reconcilePool(c: PoolControl, next: PoolConfig, log: Logger): void {
  const pool = c.pool;
  const previous = new Set(
    c.config.backends.filter((b) => b.url).map((b) =>
      backendId({
        url: b.url!,
        name: b.name,
      })
    ),
  );
  const wanted = new Map<string, BackendConfig>();
  for (const entry of next.backends) {
    if (entry.url !== undefined) wanted.set(backendId({ url: entry.url, name: entry.name }), entry);
  }
  for (const b of pool.backends) {
    const entry = wanted.get(b.id);
    // Keep what the admin API added (never in a file), unless the file now names it.
    if (!entry && previous.has(b.id) && b.source === undefined) {
      pool.remove(b.id);
      log.info(`backend ${b.url} removed`, { pool: pool.name });
    } else if (entry && new URL(entry.url!).origin !== new URL(b.url).origin) {
      pool.remove(b.id);
    }
  }
  Object.assign(pool.options, backendOptions(next));
  for (const [id, entry] of wanted) {
    const existing = pool.get(id);
    if (!existing) {
      try {
        pool.add(entry);
        log.info(`backend ${entry.url} added`, { pool: pool.name });
      } catch (err) {
        log.warn(`backend ${entry.url} not added: ${(err as Error).message}`, { pool: pool.name });
      }
      continue;
    }
    pool.setWeight(existing, entry.weight);
    pool.setMaxConnections(existing, entry.maxConnections ?? pool.options.maxConnections);
  }
  pool.slowStart = next.slowStart;
  pool.version++;
  c.outlier.options = next.outlier;
  c.runtime.passive.threshold = next.outlier.consecutiveFailures;
  c.health.configure(next.health);
  c.health.sync();
  c.runtime.budget.options = next.retryBudget;
  c.runtime.queue.maxPending = next.limits.maxPending;
  c.runtime.queue.timeout = next.limits.queueTimeout;
  c.runtime.settings = poolSettings(next, pool);
  c.config = next;
}

/** A listen failure that names the address and says what to do. */
function listenError(err: unknown, l: { host: string; port: number } | undefined): Error {
  const where = l ? `${formatHost(l.host)}:${l.port}` : "the listener";
  if (err instanceof Deno.errors.AddrInUse) {
    return new Error(`cannot listen on ${where}: address already in use`);
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

export { formatHost };
