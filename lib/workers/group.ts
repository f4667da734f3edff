/**
 * The main thread's side of the worker threads: starts them (the first one takes any port 0,
 * the others share its ports), sends state and settings to all and waits until each has
 * applied them, collects their metrics, restarts one that crashes (taking back what it held
 * in the shared counters), and drains and closes them at shutdown.
 */
import type { Logger } from "../log.ts";
import { SharedCounters } from "../shared.ts";
import type { TrafficDump } from "../stats.ts";
import type { FromWorker, PoolSnapshots, Setup, ToWorker } from "./messages.ts";

/** What the group reports to the control plane. */
export interface GroupHandlers {
  /** A backend failed in a row often enough to be ejected (seen by a worker). */
  streak(pool: string, slot: number, cause: string): void;
  /** Access-log lines, joined with newlines. */
  access(text: string): void;
  /** A worker's log line, formatted. */
  log(line: string): void;
  /** Worker `index` crashed (it is being restarted). */
  crashed(index: number): void;
  /** Dashboard samples: per request key index, duration, status, failed. */
  samples(keys: string[], data: Float64Array): void;
}

/** Longest wait for a worker to apply a message before it is taken for stuck. */
const ACK_TIMEOUT = 10_000;

interface Member {
  index: number;
  worker: Worker;
  ledger: SharedArrayBuffer;
  pending: Map<number, (message: FromWorker | undefined) => void>;
  alive: boolean;
}

/** N worker threads serving the same listeners. */
export class WorkerGroup {
  readonly #members: Member[] = [];
  #seq = 0;
  #ports: number[] | undefined;
  #stopping = false;

  constructor(
    readonly count: number,
    readonly counters: SharedCounters,
    /** The current setup (config, pool snapshots, ...), read whenever a worker starts. */
    readonly setup: () => Setup,
    readonly handlers: GroupHandlers,
    readonly log: Logger,
  ) {}

  /** Starts every worker; resolves with the listening ports once all listen. */
  async start(): Promise<number[]> {
    // The first worker binds the configured ports (0 means any); the others join its ports.
    this.#ports = await this.#spawn(0, undefined);
    await Promise.all(
      Array.from({ length: this.count - 1 }, (_, i) => this.#spawn(i + 1, this.#ports)),
    );
    return this.#ports;
  }

  /** Sends every pool's state to every worker; resolves once all have applied it. */
  snapshot(pools: PoolSnapshots): Promise<void> {
    return this.#all({ type: "snapshot", seq: 0, pools }).then(() => {});
  }

  /** Sends a reloaded setup to every worker; resolves once all have applied it. */
  reload(setup: Setup): Promise<void> {
    return this.#all({ type: "reload", seq: 0, setup }).then(() => {});
  }

  /** Every worker's metrics. */
  async collect(): Promise<TrafficDump[]> {
    const replies = await this.#all({ type: "collect", seq: 0 });
    return replies.flatMap((r) => r?.type === "collected" ? [r.dump] : []);
  }

  /** Stops accepting and waits for in-flight requests in every worker. */
  async drain(): Promise<void> {
    this.#stopping = true;
    await this.#all({ type: "drain", seq: 0 }, Infinity);
  }

  /** Closes every connection, then ends the workers. */
  async close(): Promise<void> {
    this.#stopping = true;
    await this.#all({ type: "close", seq: 0 });
    for (const m of this.#members) {
      m.alive = false;
      m.worker.terminate();
    }
  }

  #spawn(index: number, ports: number[] | undefined): Promise<number[]> {
    const worker = new Worker(new URL("./worker.ts", import.meta.url), { type: "module" });
    const member: Member = {
      index,
      worker,
      ledger: SharedCounters.newLedger(),
      pending: new Map(),
      alive: true,
    };
    this.#members[index] = member;
    const listening = Promise.withResolvers<number[]>();
    worker.onmessage = (event: MessageEvent<FromWorker>) => {
      const message = event.data;
      switch (message.type) {
        case "listening":
          listening.resolve(message.ports);
          return;
        case "failed":
          listening.reject(new Error(message.message));
          return;
        case "ack":
        case "collected": {
          const done = member.pending.get(message.seq);
          member.pending.delete(message.seq);
          done?.(message);
          return;
        }
        case "streak":
          this.handlers.streak(message.pool, message.slot, message.cause);
          return;
        case "access":
          this.handlers.access(message.text);
          return;
        case "log":
          this.handlers.log(message.line);
          return;
        case "samples":
          this.handlers.samples(message.keys, message.data);
          return;
      }
    };
    worker.onerror = (event: ErrorEvent) => {
      // An uncaught error (a hook's timer, say) ends that worker, never the balancer.
      event.preventDefault();
      this.#crashed(member, event.message);
      listening.reject(new Error(`worker ${index} failed to start: ${event.message}`));
    };
    worker.postMessage(
      {
        type: "init",
        index,
        setup: this.setup(),
        buffers: this.counters.buffers,
        ledger: member.ledger,
        ports,
      } satisfies ToWorker,
    );
    return listening.promise;
  }

  #crashed(member: Member, message: string): void {
    if (!member.alive) return;
    member.alive = false;
    member.worker.terminate();
    for (const done of member.pending.values()) done(undefined);
    member.pending.clear();
    // What it held (requests in flight, retries, queue places) will never be given back.
    this.counters.reclaim(member.ledger);
    this.log.error(`worker ${member.index} crashed: ${message}`);
    this.handlers.crashed(member.index);
    if (this.#stopping || !this.#ports) return;
    this.#spawn(member.index, this.#ports).then(
      () => this.log.info(`worker ${member.index} restarted`),
      (err) => this.log.error(`worker ${member.index} could not restart: ${err.message}`),
    );
  }

  /** Posts `message` to every live worker and waits for each reply (or its death). */
  #all(message: ToWorker, timeout = ACK_TIMEOUT): Promise<(FromWorker | undefined)[]> {
    const live = this.#members.filter((m) => m?.alive);
    return Promise.all(live.map((m) => {
      const seq = ++this.#seq;
      return new Promise<FromWorker | undefined>((resolve) => {
        const timer = Number.isFinite(timeout)
          ? setTimeout(() => {
            if (!m.pending.delete(seq)) return;
            this.log.warn(`worker ${m.index} did not answer ${message.type} in time`);
            resolve(undefined);
          }, timeout)
          : undefined;
        m.pending.set(seq, (reply) => {
          clearTimeout(timer);
          resolve(reply);
        });
        m.worker.postMessage({ ...message, seq });
      });
    }));
  }
}
