/// <reference lib="deno.worker" />
/**
 * A worker thread: the whole request path (listeners on shared ports, routing, hooks,
 * proxying, its own upstream connections) over replicas of the control plane's pools. It
 * reads backend state from snapshots, shares counters through shared memory, and sends
 * outlier streaks, access-log lines, dashboard samples and metrics to the main thread.
 */
import { AccessLog, type LineSink } from "../access_log.ts";
import {
  applyListenerSettings,
  backendOptions,
  buildTable,
  hooksOf,
  openListeners,
  poolRuntime,
  updateRuntime,
} from "../assemble.ts";
import type { Config, PoolConfig } from "../config.ts";
import { DataPlane } from "../dataplane.ts";
import type { Server } from "../listener/server.ts";
import { Logger } from "../log.ts";
import { Pool } from "../pool.ts";
import type { PoolRuntime, ProxyObserver, RequestRecord } from "../proxy.ts";
import { SharedCounters } from "../shared.ts";
import { Stats } from "../stats.ts";
import type { FromWorker, PoolSnapshots, Setup, ToWorker } from "./messages.ts";

const post = (message: FromWorker, transfer?: Transferable[]) =>
  self.postMessage(message, transfer ?? []);

/** Access-log lines gathered for a moment and sent to the main thread, which writes them. */
class PostedLines implements LineSink {
  #lines: string[] = [];
  #timer: ReturnType<typeof setTimeout> | undefined;

  write(line: string): void {
    this.#lines.push(line);
    this.#timer ??= setTimeout(() => this.flush(), 10);
  }

  flush(): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
    if (!this.#lines.length) return;
    post({ type: "access", text: this.#lines.join("\n") });
    this.#lines = [];
  }

  close(): Promise<void> {
    this.flush();
    return Promise.resolve();
  }
}

/** Per-request summaries for the dashboard, sent four times a second. */
class Samples implements ProxyObserver {
  #keys = new Map<string, number>();
  #data = new Float64Array(4 * 1024);
  #n = 0;
  #timer: ReturnType<typeof setTimeout> | undefined;

  request(r: RequestRecord): void {
    const key = r.pool + "\0" + r.route + "\0" + (r.backend?.id ?? "");
    let k = this.#keys.get(key);
    if (k === undefined) this.#keys.set(key, k = this.#keys.size);
    if (this.#n + 4 > this.#data.length) {
      const bigger = new Float64Array(this.#data.length * 2);
      bigger.set(this.#data);
      this.#data = bigger;
    }
    const d = this.#data;
    d[this.#n++] = k;
    d[this.#n++] = r.durationMs;
    d[this.#n++] = r.status;
    d[this.#n++] = r.error === undefined ? 0 : 1;
    this.#timer ??= setTimeout(() => this.flush(), 250);
  }
  upstreamError(): void {}
  retry(): void {}

  flush(): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
    if (this.#n === 0) return;
    const data = this.#data.slice(0, this.#n);
    post({ type: "samples", keys: [...this.#keys.keys()], data }, [data.buffer]);
    this.#keys = new Map();
    this.#n = 0;
  }
}

let counters: SharedCounters;
let log: Logger;
let config: Config;
let configVersion = 1;
let hooksVersion = 0;
let servers: Server[] = [];
let dataPlane: DataPlane;
let accessLog: AccessLog | undefined;
let lines: PostedLines | undefined;
const samples = new Samples();
const pools = new Map<string, Pool>();
const runtimes = new Map<string, PoolRuntime>();
/** Each pool's settings in force (they change on reload). */
const poolConfigs = new Map<string, PoolConfig>();
let observers: readonly ProxyObserver[] = [];
let stats: Stats;

function runtimeOf(initial: PoolConfig, pool: Pool): PoolRuntime {
  return poolRuntime(initial, pool, counters, (backend, cause) => {
    const pc = poolConfigs.get(pool.name) ?? initial;
    // Out of this worker's rotation at once; the control plane decides for every worker and
    // its next snapshot (sent after every streak) confirms or undoes this.
    const out = pool.backends.filter((b) => b.state === "ejected").length;
    if (((out + 1) * 100) / pool.backends.length <= pc.outlier.maxEjectionPercent) {
      pool.eject(backend, Date.now() + pc.outlier.baseEjection, `ejection pending: ${cause}`);
    }
    post({ type: "streak", pool: pool.name, slot: backend.slot, cause });
  });
}

/** Makes the replicas match the control plane's pools: new pools built, gone ones closed. */
function applyPools(setup: { config: Config; pools: PoolSnapshots }): void {
  for (const pc of setup.config.pools) {
    const snap = setup.pools[pc.name];
    if (!snap) continue;
    let pool = pools.get(pc.name);
    if (!pool || pool.slot !== snap.slot) {
      pool = new Pool(pc.name, backendOptions(pc), counters, snap.slot);
      pools.set(pc.name, pool);
      runtimes.set(pc.name, runtimeOf(pc, pool));
    }
    pool.applySnapshot(snap.snapshot);
    poolConfigs.set(pc.name, pc);
    updateRuntime(runtimes.get(pc.name)!, pc);
  }
  const names = new Set(setup.config.pools.map((p) => p.name));
  for (const [name, pool] of pools) {
    if (names.has(name)) continue;
    pools.delete(name);
    runtimes.delete(name);
    poolConfigs.delete(name);
    // In-flight requests finish on the pool they started on; it closes once they have.
    Promise.all(pool.backends.map((b) => b.idle())).then(() => pool.close());
  }
}

function setObservers(): void {
  observers = [stats, samples, ...(accessLog ? [accessLog.observer] : [])];
}

async function init(message: Extract<ToWorker, { type: "init" }>): Promise<void> {
  const { setup } = message;
  config = setup.config;
  configVersion = setup.configVersion;
  counters = new SharedCounters(message.buffers, message.ledger);
  // Lines go to the main thread's log, so one writer keeps them whole and in one place.
  log = new Logger(
    config.log.level,
    config.log.format,
    (line) => post({ type: "log", line }),
    { worker: message.index },
  );
  applyPools(setup);
  stats = new Stats(() => [...pools.values()], () => configVersion);
  stats.worker = message.index;
  if (config.accessLog) accessLog = new AccessLog(config.accessLog, lines = new PostedLines());
  setObservers();
  hooksVersion = setup.hooksVersion;
  const hooks = await hooksOf(config, hooksVersion);
  dataPlane = new DataPlane(
    buildTable(config, { runtimes: new Map(runtimes), hooks, limiters: setup.limiters }),
    { log, observers: () => observers },
  );
  servers = openListeners(config, dataPlane.handle, log, {
    reusePort: true,
    ports: message.ports,
  });
  stats.clientConnections = () => servers.reduce((n, s) => n + s.connections, 0);
  stats.tunnelsOpen = () => servers.reduce((n, s) => n + s.tunnels, 0);
  post({ type: "listening", ports: servers.map((s) => s.addr.port) });
}

async function reload(setup: Setup): Promise<void> {
  const previous = config;
  config = setup.config;
  configVersion = setup.configVersion;
  applyPools(setup);
  const hooks = setup.hooksVersion === hooksVersion
    ? dataPlane.table.hooks
    : await hooksOf(config, hooksVersion = setup.hooksVersion);
  await applyListenerSettings(servers, config);
  log.configure(config.log.level, config.log.format);
  if (JSON.stringify(config.accessLog) !== JSON.stringify(previous.accessLog)) {
    await accessLog?.close();
    accessLog = config.accessLog
      ? new AccessLog(config.accessLog, lines = new PostedLines())
      : undefined;
    setObservers();
  }
  dataPlane.table = buildTable(config, {
    runtimes: new Map(runtimes),
    hooks,
    limiters: setup.limiters,
  });
}

/** Sends what is still buffered (access log, samples) to the main thread. */
function flush(): void {
  lines?.flush();
  samples.flush();
}

self.onmessage = async (event: MessageEvent<ToWorker>) => {
  const message = event.data;
  try {
    switch (message.type) {
      case "init":
        try {
          await init(message);
        } catch (err) {
          post({ type: "failed", message: (err as Error).message });
        }
        return;
      case "snapshot":
        for (const [name, { snapshot }] of Object.entries(message.pools)) {
          pools.get(name)?.applySnapshot(snapshot);
        }
        break;
      case "reload":
        await reload(message.setup);
        break;
      case "collect":
        flush();
        post({ type: "collected", seq: message.seq, dump: stats.dump() });
        return;
      case "drain":
        await Promise.all(servers.map((s) => s.shutdown()));
        flush();
        break;
      case "close":
        for (const s of servers) s.close();
        for (const pool of pools.values()) pool.close();
        flush();
        break;
    }
    post({ type: "ack", seq: message.seq });
  } catch (err) {
    log?.error("worker message failed", { type: message.type, error: String(err) });
    if ("seq" in message) post({ type: "ack", seq: message.seq });
  }
};
