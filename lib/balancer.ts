/**
 * The control plane: owns the configuration, the pools and their backends' state, health
 * checks, DNS discovery, outlier decisions, reload and shutdown. The request path (the data
 * plane) runs on the main thread with `workers: 1`, or in N worker threads that share the
 * listeners' ports, read the pools from snapshots and share counters in memory.
 */
import { AccessLog } from "./access_log.ts";
import {
  applyListenerSettings,
  backendOptions,
  buildTable,
  hooksOf,
  openListeners,
  poolRuntime,
  updateRuntime,
} from "./assemble.ts";
import {
  type BackendConfig,
  type Config,
  DEFAULT_POOL,
  listenersOf,
  type PoolConfig,
} from "./config.ts";
import { DataPlane } from "./dataplane.ts";
import { applyEndpoints, drainAway } from "./discovery/apply.ts";
import { type Discovery, type DnsTarget, startDiscovery } from "./discovery/mod.ts";
import { HealthChecker } from "./health.ts";
import type { Server } from "./listener/server.ts";
import { LineWriter, type Logger } from "./log.ts";
import { backendId, formatHost } from "./net.ts";
import { OutlierDetector } from "./outlier.ts";
import { type Backend, Pool } from "./pool.ts";
import type { PoolRuntime, ProxyObserver, RequestRecord } from "./proxy.ts";
import { Router } from "./router.ts";
import { SharedCounters } from "./shared.ts";
import { Stats } from "./stats.ts";
import { WorkerGroup } from "./workers/group.ts";
import type { PoolSnapshots, Setup } from "./workers/messages.ts";

/** A pool and the control plane's work on it. */
export interface PoolControl {
  readonly pool: Pool;
  config: PoolConfig;
  readonly health: HealthChecker;
  readonly outlier: OutlierDetector;
  /** The main thread's request path over this pool (with `workers: 1`). */
  readonly runtime: PoolRuntime;
}

/** A running balancer. */
export interface Balancer {
  /** The first traffic listener's address. */
  readonly addr: Deno.NetAddr;
  /** Every traffic listener's address, in `listen` order. */
  readonly addrs: readonly Deno.NetAddr[];
  /** Worker threads serving traffic (1: the main thread serves it). */
  readonly workers: number;
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
  /** Gathers every worker's metrics into `stats` (nothing to do with one worker). */
  collect(): Promise<void>;
  /** Resolves once every worker has seen the pools' current state (admin changes). */
  sync(): Promise<void>;
  /** Applies a validated config: pools, routes, backends and settings swapped atomically. */
  reload(config: Config): Promise<void>;
  /** Adds a backend at run time. Throws if its id or URL exists in the pool. */
  addBackend(entry: BackendConfig, pool?: string): Backend;
  /** Removes a backend; in-flight requests finish. Returns false if unknown. */
  removeBackend(id: string, pool?: string): boolean;
  /** Stops new requests to a backend; resolves when its last in-flight request ends. */
  drain(id: string, pool?: string): Promise<void>;
  /** Returns a drained or disabled backend to service; resolves once every worker has it. */
  enable(id: string, pool?: string): Promise<void>;
  /** Takes a backend out of service at once; resolves once every worker has stopped using it. */
  disable(id: string, pool?: string): Promise<void>;
  /** Changes a backend's weight; resolves once every worker uses it. */
  setWeight(id: string, weight: number, pool?: string): Promise<void>;
  /** Stops accepting, waits for in-flight requests (up to timeouts.drain), then stops everything. */
  shutdown(): Promise<void>;
  /** Resolves once the balancer has stopped. */
  readonly finished: Promise<void>;
}

/** Thrown by admin operations on a backend id that does not exist. */
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

/** The number of worker threads `workers:` asks for. */
export function workerCount(setting: number | "auto"): number {
  return setting === "auto" ? Math.max(1, navigator.hardwareConcurrency || 1) : setting;
}

/** Whether Deno runs with `--unstable-net` (needed to share a port between threads). */
function unstableNet(): boolean {
  return typeof (Deno as unknown as Record<string, unknown>).listenDatagram === "function";
}

/** Starts the traffic listeners, health checks and background work for `config`. */
export async function startBalancer(config: Config, log: Logger): Promise<Balancer> {
  const workers = workerCount(config.workers);
  if (workers > 1 && !unstableNet()) {
    throw new Error(
      `workers: ${config.workers} needs Deno's --unstable-net flag to share ports between ` +
        `threads (deno.json sets it: "unstable": ["net"]), or workers: 1`,
    );
  }
  const counters = new SharedCounters();
  let current = config;
  let version = 1;
  let hooksVersion = 1;
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
    const runtime = poolRuntime(pc, pool, counters, (b, cause) => outlier.eject(b, cause));
    pool.watch(publish);
    pool.settled = () => group ? group.snapshot(snapshots()) : Promise.resolve();
    return { pool, config: pc, health, outlier, runtime };
  };

  // Observers: metrics first, then added ones (the dashboard), then the access log.
  let accessLog = config.accessLog ? new AccessLog(config.accessLog) : undefined;
  const extra: ProxyObserver[] = [];
  let observers: readonly ProxyObserver[] = [];
  const listen = () => {
    observers = [stats, ...extra, ...(accessLog ? [accessLog.observer] : [])];
  };
  listen();
  // With worker threads, they format the access log and this thread writes it.
  let accessWriter = workers > 1 && config.accessLog
    ? new LineWriter(config.accessLog.path)
    : undefined;

  // ------------------------------------------------------------ worker threads
  let group: WorkerGroup | undefined;
  let router: Router | undefined; // the workers' rate-limit tables live in its limiters
  const snapshots = (): PoolSnapshots =>
    Object.fromEntries(
      [...pools].map(([name, c]) => [name, { slot: c.pool.slot, snapshot: c.pool.snapshot() }]),
    );
  const setupOf = (next: Config): Setup => ({
    config: next,
    pools: snapshots(),
    limiters: router?.limiterBuffers() ?? [],
    hooksVersion,
    configVersion: version,
  });
  let publishing = false;
  function publish(): void {
    if (!group || publishing) return;
    publishing = true;
    setTimeout(() => {
      publishing = false;
      group?.snapshot(snapshots());
    }, 0);
  }

  for (const pc of config.pools) pools.set(pc.name, makePool(pc, true));

  let dataPlane: DataPlane | undefined;
  let servers: Server[] = [];
  let addrs: Deno.NetAddr[];
  const hooks = await hooksOf(config, hooksVersion);
  if (workers === 1) {
    dataPlane = new DataPlane(buildTable(config, { runtimes: runtimesOf(pools), hooks }), {
      log,
      observers: () => observers,
    });
    servers = openListeners(config, dataPlane.handle, log);
    addrs = servers.map((s) => s.addr);
    stats.clientConnections = () => servers.reduce((n, s) => n + s.connections, 0);
    stats.tunnelsOpen = () => servers.reduce((n, s) => n + s.tunnels, 0);
  } else {
    router = new Router(config.routes, config.pools[0]?.name ?? DEFAULT_POOL);
    group = new WorkerGroup(workers, counters, () => setupOf(current), {
      streak(poolName, slot, cause) {
        const c = pools.get(poolName);
        const backend = c?.pool.backends.find((b) => b.slot === slot);
        if (backend) c!.outlier.eject(backend, cause);
        // The worker took the backend out of its own rotation: this confirms or undoes that.
        publish();
      },
      access: (text) => accessWriter?.write(text),
      log: (line) => log.line(line),
      crashed: (index) => stats.workerCrashes.inc([String(index)]),
      samples(keys, data) {
        if (!extra.length) return;
        const records = keys.map((key) => {
          const [pool, route, id] = key.split("\0");
          return {
            pool,
            route,
            backend: pools.get(pool)?.pool.get(id) ?? (id ? { id } : undefined),
          };
        });
        for (let i = 0; i < data.length; i += 4) {
          const r = {
            ...records[data[i]],
            durationMs: data[i + 1],
            status: data[i + 2],
            error: data[i + 3] ? "failed" : undefined,
          } as unknown as RequestRecord;
          for (const o of extra) o.request(r);
        }
      },
    }, log);
    let ports: number[];
    try {
      ports = await group.start();
    } catch (err) {
      await group.close();
      throw err;
    }
    for (let i = 0; i < workers; i++) stats.workerCrashes.inc([String(i)], 0);
    addrs = listenersOf(config).map((l, i) => ({
      hostname: l.host,
      port: ports[i],
      transport: "tcp" as const,
    }));
  }
  for (const [i, addr] of addrs.entries()) {
    const scheme = listenersOf(config)[i].tls ? "https" : "http";
    log.info(`sluice listening on ${scheme}://${formatHost(addr.hostname)}:${addr.port}`, {
      strategy: config.pools[0]?.strategy,
      pools: pools.size,
      backends: [...pools.values()].reduce((n, c) => n + c.pool.backends.length, 0),
      ...(workers > 1 ? { workers } : {}),
    });
  }
  for (const c of pools.values()) c.health.sync();

  // ------------------------------------------------------------ DNS discovery
  type Target = DnsTarget & { pool: string; entry: BackendConfig };
  const targetsOf = (next: Config): Target[] =>
    next.pools.flatMap((pc) =>
      pc.backends.filter((b) => b.dns !== undefined).map((entry) => ({
        dns: entry.dns!,
        port: entry.port,
        type: entry.type ?? "A",
        pool: pc.name,
        entry,
      }))
    );
  const discover = (next: Config): Discovery<Target> | undefined => {
    const targets = targetsOf(next);
    if (!targets.length) return undefined;
    return startDiscovery(targets, {
      interval: next.discovery.interval,
      nameServer: next.discovery.nameServer,
      onUpdate(t, endpoints) {
        const c = pools.get(t.pool);
        if (!c) return;
        applyEndpoints(c.pool, `dns: ${t.dns}`, t.entry, endpoints, log, () => c.health.sync());
      },
      onError(t, err) {
        stats.discoveryErrors.inc([t.pool, t.dns]);
        log.warn(`discovery of ${t.dns} failed, keeping the last answer: ${err.message}`, {
          pool: t.pool,
        });
      },
    });
  };
  let discovery = discover(config);
  let discoveryKey = JSON.stringify([targetsOf(config), config.discovery]);

  let draining = false;
  let healthyOnce = false;
  Promise.all([...pools.values()].map((c) => c.health.firstRound)).then(() => healthyOnce = true);

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
    workers,
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
    finished: workers === 1
      ? Promise.race([Promise.all(servers.map((s) => s.finished)).then(() => {}), stopped.promise])
      : stopped.promise,

    async collect() {
      if (group) stats.setMerged(await group.collect());
    },
    async sync() {
      if (group) await group.snapshot(snapshots());
    },

    async reload(next: Config) {
      // What can fail comes first, so a rejected reload changes nothing.
      const nextHooks = await hooksOf(next, hooksVersion + 1);
      hooksVersion++;
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
      const key = JSON.stringify([targetsOf(next), next.discovery]);
      if (key !== discoveryKey) {
        await discovery?.stop();
        discovery = discover(next);
        discoveryKey = key;
        // Backends of dns entries that are gone from the file drain away.
        const sources = new Set(targetsOf(next).map((t) => `${t.pool}\0dns: ${t.dns}`));
        for (const c of pools.values()) {
          for (const b of c.pool.backends) {
            if (b.source && !sources.has(`${c.pool.name}\0${b.source}`)) {
              drainAway(c.pool, b, "its dns entry was removed", log, () => c.health.sync());
            }
          }
        }
      }
      log.configure(next.log.level, next.log.format);
      // Every reload opens the file afresh, changed or not: after logrotate's rename, SIGHUP
      // starts a new file at the path (nginx's USR1); lines already taken end the old one.
      if (next.accessLog || current.accessLog) {
        const [oldLog, oldWriter] = [accessLog, accessWriter];
        if (group) accessWriter = next.accessLog ? new LineWriter(next.accessLog.path) : undefined;
        else accessLog = next.accessLog ? new AccessLog(next.accessLog) : undefined;
        oldLog?.close();
        oldWriter?.close();
        listen();
      }
      const previous = current;
      current = next;
      version++;
      if (dataPlane) {
        dataPlane.table = buildTable(next, {
          runtimes: runtimesOf(pools),
          hooks: nextHooks,
          previous: dataPlane.table,
        });
        await applyListenerSettings(servers, next);
      } else {
        router = new Router(next.routes, next.pools[0]?.name ?? DEFAULT_POOL, router);
        await group!.reload(setupOf(next));
      }
      for (const what of restartOnlyChanges(previous, next)) {
        log.warn(`${what} changes take effect after a restart`);
      }
      if (JSON.stringify(next.admin) !== JSON.stringify(previous.admin)) {
        log.warn("admin listener changes take effect after a restart");
      }
      if (next.workers !== previous.workers) {
        log.warn("workers changes take effect after a restart");
      }
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
    async drain(id, pool) {
      const [backend, c] = find(id, pool);
      c.pool.setAdmin(backend, "draining", "draining by operator");
      await c.pool.settled();
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
      return c.pool.settled();
    },
    disable(id, pool) {
      const [backend, c] = find(id, pool);
      c.pool.setAdmin(backend, "disabled", "disabled by operator");
      return c.pool.settled();
    },
    setWeight(id, weight, pool) {
      const [backend, c] = find(id, pool);
      c.pool.setWeight(backend, weight);
      return c.pool.settled();
    },

    shutdown() {
      stopping ??= (async () => {
        draining = true;
        log.info("shutting down: draining in-flight requests", {
          timeout: `${current.timeouts.drain}ms`,
        });
        const stopDiscovery = discovery?.stop();
        for (const c of pools.values()) {
          c.health.stop();
          c.outlier.stop();
        }
        await stopDiscovery;
        let timer: ReturnType<typeof setTimeout> | undefined;
        const drained = group
          ? group.drain()
          : Promise.all(servers.map((s) => s.shutdown())).then(() => {});
        const late = await Promise.race([
          drained.then(() => false),
          new Promise<boolean>((resolve) => {
            timer = setTimeout(() => resolve(true), current.timeouts.drain);
          }),
        ]);
        clearTimeout(timer);
        if (late) log.warn("drain timeout reached, closing remaining connections");
        if (group) await group.close();
        else if (late) { for (const s of servers) s.close(); }
        for (const c of pools.values()) c.pool.close();
        await accessLog?.close();
        await accessWriter?.close();
        log.info("stopped");
        stopped.resolve();
      })();
      return stopping;
    },
  };
  return balancer;
}

/**
 * What changed among the listener settings a reload cannot apply (certificates and redirects
 * it can), each named as the restart-only warning names it: `listen address` (a listener
 * added, removed or moved), then `listener tls`, `listener tls.minVersion`, `listener http2`,
 * `listener proxyProtocol`.
 */
function restartOnlyChanges(previous: Config, next: Config): string[] {
  const before = listenersOf(previous);
  const after = listenersOf(next);
  if (
    before.length !== after.length ||
    before.some((l, i) => l.host !== after[i].host || l.port !== after[i].port)
  ) return ["listen address"];
  const changed = new Set<string>();
  before.forEach((l, i) => {
    const n = after[i];
    if ((l.tls === undefined) !== (n.tls === undefined)) changed.add("listener tls");
    else if (l.tls?.minVersion !== n.tls?.minVersion) changed.add("listener tls.minVersion");
    if (l.http2 !== n.http2) changed.add("listener http2");
    if (l.proxyProtocol !== n.proxyProtocol) changed.add("listener proxyProtocol");
  });
  return [...changed];
}

function runtimesOf(pools: ReadonlyMap<string, PoolControl>): Map<string, PoolRuntime> {
  return new Map([...pools].map(([name, c]) => [name, c.runtime]));
}

/**
 * Applies a pool's new settings in place: backends the file no longer lists are removed, new
 * ones added, weights and limits updated; backends added through the admin API stay, and an
 * operator's drain or disable stays on backends that remain.
 */
function reconcilePool(c: PoolControl, next: PoolConfig, log: Logger): void {
  const pool = c.pool;
  const previous = new Set(
    c.config.backends.filter((b) => b.url).map((b) => backendId({ url: b.url!, name: b.name })),
  );
  const wanted = new Map<string, BackendConfig>();
  for (const entry of next.backends) {
    if (entry.url !== undefined) wanted.set(backendId({ url: entry.url, name: entry.name }), entry);
  }
  for (const b of pool.backends) {
    const entry = wanted.get(b.id);
    // Keep what the admin API added (never in a file) and what DNS found.
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
  pool.touch();
  c.outlier.options = next.outlier;
  c.health.configure(next.health);
  c.health.sync();
  updateRuntime(c.runtime, next);
  c.config = next;
}

export { formatHost };
