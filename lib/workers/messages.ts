/** The messages between the control plane (main thread) and worker threads. */
import type { Config } from "../config.ts";
import type { PoolSnapshot } from "../pool.ts";
import type { SharedBuffers } from "../shared.ts";
import type { TrafficDump } from "../stats.ts";

/** Every pool's slot and state, by name. */
export type PoolSnapshots = Record<string, { slot: number; snapshot: PoolSnapshot }>;

/** What a worker needs to build its data plane. */
export interface Setup {
  config: Config;
  pools: PoolSnapshots;
  /** Rate-limit tables by route index, shared with every worker. */
  limiters: (SharedArrayBuffer | undefined)[];
  hooksVersion: number;
  configVersion: number;
}

/** Main thread → worker. */
export type ToWorker =
  | {
    type: "init";
    index: number;
    setup: Setup;
    buffers: SharedBuffers;
    ledger: SharedArrayBuffer;
    /** The ports to listen on, replacing the config's (after the first worker took port 0). */
    ports: number[] | undefined;
  }
  | { type: "snapshot"; seq: number; pools: PoolSnapshots }
  | { type: "reload"; seq: number; setup: Setup }
  | { type: "collect"; seq: number }
  | { type: "drain"; seq: number }
  | { type: "close"; seq: number };

/** Worker → main thread. */
export type FromWorker =
  | { type: "listening"; ports: number[] }
  | { type: "failed"; message: string }
  | { type: "ack"; seq: number }
  | { type: "collected"; seq: number; dump: TrafficDump }
  | { type: "streak"; pool: string; slot: number; cause: string }
  | { type: "access"; text: string }
  /** A log line the worker formatted, for the main thread's log. */
  | { type: "log"; line: string }
  | {
    type: "samples";
    /** `pool\0route\0backend` per key index. */
    keys: string[];
    /** Per request: key index, duration (ms), status, 1 if it failed. */
    data: Float64Array;
  };
