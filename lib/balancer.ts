/** Wires config, pool, selection, health, proxy and metrics into a running balancer, with reload and shutdown. */
import { AccessLog } from "./access_log.ts";
import { type BackendConfig, backendId, type Config } from "./config.ts";
import { HealthChecker } from "./health.ts";
import type { Logger } from "./log.ts";
import { OutlierDetector } from "./outlier.ts";
import { type Backend, Pool } from "./pool.ts";
import { type ClientTimeouts, serve } from "./listener/server.ts";
import { Proxy, type ProxyObserver, type ProxySettings } from "./proxy.ts";
import { SlotQueue } from "./queue.ts";
import { RetryBudget } from "./retry_budget.ts";
import { createSelector } from "./select/mod.ts";
import { sticky } from "./select/sticky.ts";
import { Stats } from "./stats.ts";

/** A running balancer. */
export interface Balancer {
  /** The traffic listener's address. */
  readonly addr: Deno.NetAddr;
  readonly pool: Pool;
  readonly stats: Stats;
  readonly health: HealthChecker;
  readonly log: Logger;
  /** The configuration in force. */
  readonly config: Config;
  /** 1 at start, +1 per applied reload. */
  readonly version: number;
  readonly startedAt: number;
  /** Adds a listener told about every finished request, upstream failure and retry; returns its remover. */
  addObserver(observer: ProxyObserver): () => void;
  /** Applies a validated config: backends added, removed, re-weighted; settings swapped atomically. */
  reload(config: Config): void;
  /** Adds a backend at run time. Throws if its id exists. */
  addBackend(entry: BackendConfig): Backend;
  /** Removes a backend; in-flight requests finish. Returns false if unknown. */
  removeBackend(id: string): boolean;
  /** Stops new requests to a backend; resolves when its last in-flight request ends. */
  drain(id: string): Promise<void>;
  /** Returns a drained or disabled backend to service. */
  enable(id: string): void;
  /** Takes a backend out of service at once. */
  disable(id: string): void;
  /** Changes a backend's weight. */
  setWeight(id: string, weight: number): void;
  /** Stops accepting, waits for in-flight requests (up to timeouts.drain), then stops everything. */
  shutdown(): Promise<void>;
  /** Resolves once the balancer has stopped. */
  readonly finished: Promise<void>;
}

/** Thrown by admin operations on a backend id that does not exist. */
export class UnknownBackend extends Error {
  constructor(id: string) {
    super(`no backend with id ${id}`);
    this.name = "UnknownBackend";
  }
}

function proxySettings(config: Config, pool: Pool): ProxySettings {
  const selector = createSelector(pool, config);
  return {
    selector: config.sticky ? sticky(selector, config.sticky, () => pool.backends) : selector,
    retries: config.retries,
    retryOn: new Set(config.retryOn),
    retryBuffer: config.retryBuffer,
    responseTimeout: config.timeouts.response,
    sticky: config.sticky,
  };
}

/** Starts the traffic listener, health checks and background work for `config`. */
export function startBalancer(config: Config, log: Logger): Balancer {
  const pool = new Pool({
    maxConnections: config.limits.maxConnections ?? Infinity,
    idleTimeout: config.timeouts.idle,
    connectTimeout: config.timeouts.connect,
  });
  pool.slowStart = config.slowStart;
  // Backends present at start need no ramp: slow start is for ones that come back or join.
  for (const entry of config.backends) pool.add(entry).upSince = 0;

  let current = config;
  let version = 1;
  const stats = new Stats(pool, () => version);
  const outlier = new OutlierDetector(pool, config.outlier, log);
  outlier.onEject = (b) => stats.ejections.inc([b.id]);
  const health = new HealthChecker(pool, config.health, log, outlier);
  const budget = new RetryBudget(config.retryBudget.percent, config.retryBudget.minPerSecond);
  const queue = new SlotQueue(config.limits.maxPending, config.limits.queueTimeout);
  let accessLog = config.accessLog ? new AccessLog(config.accessLog) : undefined;
  const extra: ProxyObserver[] = [];
  const accessObserver: ProxyObserver = {
    request: (r: Parameters<Stats["request"]>[0]) => accessLog?.write(r),
    upstreamError() {},
    retry() {},
  };
  const proxy = new Proxy(proxySettings(config, pool), {
    pool,
    outlier,
    budget,
    queue,
    log,
    observers: [],
  });

  // The proxy's observer list is derived: metrics first, then added observers, then the access log.
  const listen = () => {
    proxy.parts.observers = [stats, ...extra, ...(accessLog ? [accessObserver] : [])];
  };
  listen();
  const stopped = Promise.withResolvers<void>();
  const server = serve({
    hostname: config.listen.host,
    port: config.listen.port,
    timeouts: clientTimeouts(config),
    handler: proxy.handle,
    onError(err) {
      log.error("request handling failed", { error: String(err) });
    },
  });
  const addr = server.addr;
  stats.clientConnections = () => server.connections;
  log.info(`sluice listening on http://${formatHost(addr.hostname)}:${addr.port}`, {
    strategy: config.strategy,
    backends: pool.backends.length,
  });
  health.sync();

  const find = (id: string): Backend => {
    const backend = pool.get(id);
    if (!backend) throw new UnknownBackend(id);
    return backend;
  };

  let stopping: Promise<void> | undefined;
  const balancer: Balancer = {
    addr,
    pool,
    stats,
    health,
    log,
    get config() {
      return current;
    },
    get version() {
      return version;
    },
    startedAt: stats.startedAt,
    finished: Promise.race([server.finished, stopped.promise]),

    reload(next: Config) {
      const ids = new Set(next.backends.map(backendId));
      for (const b of pool.backends) {
        if (!ids.has(b.id)) {
          pool.remove(b.id);
          log.info(`backend ${b.url} removed`);
        }
      }
      for (const entry of next.backends) {
        const existing = pool.get(backendId(entry));
        if (existing && existing.url !== entry.url) pool.remove(existing.id);
        if (!existing || existing.url !== entry.url) {
          pool.add(entry);
          log.info(`backend ${entry.url} added`);
          continue;
        }
        if (existing.weight !== entry.weight) {
          existing.weight = entry.weight;
          pool.version++;
        }
        existing.maxConnections = entry.maxConnections ?? next.limits.maxConnections ?? Infinity;
      }
      pool.options.maxConnections = next.limits.maxConnections ?? Infinity;
      pool.options.connectTimeout = next.timeouts.connect;
      pool.options.idleTimeout = next.timeouts.idle;
      server.timeouts = clientTimeouts(next);
      pool.slowStart = next.slowStart;
      pool.version++;
      outlier.options = next.outlier;
      health.configure(next.health);
      health.sync();
      budget.percent = next.retryBudget.percent;
      budget.minPerSecond = next.retryBudget.minPerSecond;
      queue.maxPending = next.limits.maxPending;
      queue.timeout = next.limits.queueTimeout;
      log.configure(next.log.level, next.log.format);
      if (JSON.stringify(next.accessLog) !== JSON.stringify(current.accessLog)) {
        const old = accessLog;
        accessLog = next.accessLog ? new AccessLog(next.accessLog) : undefined;
        old?.close();
        listen();
      }
      proxy.settings = proxySettings(next, pool);
      if (JSON.stringify(next.listen) !== JSON.stringify(current.listen)) {
        log.warn("listen address changes take effect after a restart");
      }
      if (JSON.stringify(next.admin) !== JSON.stringify(current.admin)) {
        log.warn("admin listener changes take effect after a restart");
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
    addBackend(entry) {
      const backend = pool.add(entry);
      health.sync();
      log.info(`backend ${backend.url} added`);
      return backend;
    },
    removeBackend(id) {
      const backend = pool.remove(id);
      if (!backend) return false;
      health.sync();
      log.info(`backend ${backend.url} removed`);
      return true;
    },
    drain(id) {
      const backend = find(id);
      backend.admin = "draining";
      pool.update(backend, "draining by operator");
      log.info(`backend ${backend.url} is draining`, { inflight: backend.inflight });
      if (backend.inflight === 0) {
        log.info(`backend ${backend.url} is drained`);
        return Promise.resolve();
      }
      return new Promise((resolve) => {
        backend.onIdle = () => {
          log.info(`backend ${backend.url} is drained`);
          resolve();
        };
      });
    },
    enable(id) {
      const backend = find(id);
      backend.admin = "enabled";
      backend.onIdle = undefined;
      pool.update(backend, "enabled by operator");
    },
    disable(id) {
      const backend = find(id);
      backend.admin = "disabled";
      pool.update(backend, "disabled by operator");
    },
    setWeight(id, weight) {
      const backend = find(id);
      backend.weight = weight;
      pool.version++;
    },

    shutdown() {
      stopping ??= (async () => {
        log.info("shutting down: draining in-flight requests", {
          timeout: `${current.timeouts.drain}ms`,
        });
        health.stop();
        outlier.stop();
        let timer: ReturnType<typeof setTimeout> | undefined;
        const late = await Promise.race([
          server.shutdown().then(() => false),
          new Promise<boolean>((resolve) => {
            timer = setTimeout(() => resolve(true), current.timeouts.drain);
          }),
        ]);
        clearTimeout(timer);
        if (late) {
          log.warn("drain timeout reached, closing remaining connections");
          server.close();
        }
        pool.close();
        await accessLog?.close();
        log.info("stopped");
        stopped.resolve();
      })();
      return stopping;
    },
  };
  return balancer;
}

function clientTimeouts(config: Config): ClientTimeouts {
  const { clientHeader, clientIdle, client } = config.timeouts;
  return { header: clientHeader, idle: clientIdle, client };
}

/** Brackets IPv6 addresses for use in a URL. */
export function formatHost(host: string): string {
  return host.includes(":") ? `[${host}]` : host;
}
