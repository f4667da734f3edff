/**
 * Latency at a fixed request rate, with h2load (nghttp2-client) as the load generator: `--h1`
 * speaks HTTP/1.1 and `--rps` paces each connection. One h2load process per connection, started
 * one after another, so the connections' send times fall at different phases of the interval; a
 * single h2load fires all its connections on the same timer tick, which turns a steady 3,000 req/s
 * over 20 connections into bursts of 20 and measures queueing behind the burst instead (checked:
 * direct to a backend, p99 2.3 ms that way against 0.7 ms interleaved). Each request's latency
 * comes from h2load's `--log-file` (start, status, µs until the end of the response).
 */
import { run } from "./proc.ts";

/** A paced run. */
export interface PacedOptions {
  /** Requests per second in all. */
  rate: number;
  connections: number;
  /** Measured seconds, after `warmup`. */
  seconds: number;
  warmup: number;
  /** A directory for the per-connection log files. */
  dir: string;
}

/** What a paced run measured. */
export interface PacedResult {
  /** Latencies, ms. */
  p50: number;
  p90: number;
  p99: number;
  max: number;
  /** Responses in the measured part. */
  requests: number;
  /** Achieved rate, requests per second. */
  rate: number;
  /** Failed, errored or timed-out requests, and non-2xx responses. */
  failed: number;
  /** Measured seconds. */
  seconds: number;
  /** Every response's latency, µs, sorted: runs are pooled from these (see {@linkcode pooled}). */
  latencies: number[];
}

/** The latency at quantile `q` (0..1) of sorted µs values, in ms. */
function quantile(sortedUs: number[], q: number): number {
  if (!sortedUs.length) return NaN;
  return sortedUs[Math.min(sortedUs.length - 1, Math.floor(q * sortedUs.length))] / 1000;
}

/** Loads `url` at `options.rate` over `options.connections` connections and reports latencies. */
export async function paced(
  h2load: string,
  url: string,
  options: PacedOptions,
): Promise<PacedResult> {
  const perConnection = options.rate / options.connections;
  if (!Number.isInteger(perConnection)) {
    throw new Error(`paced: rate ${options.rate} is not a multiple of ${options.connections}`);
  }
  const runs: Promise<{ log: string; stdout: string; ok: boolean; stderr: string }>[] = [];
  for (let i = 0; i < options.connections; i++) {
    const log = `${options.dir}/paced-${i}.tsv`;
    runs.push(
      run(h2load, [
        "--h1",
        "-c1",
        "-t1",
        `--rps=${perConnection}`,
        `-D${Math.round(options.seconds * 1000)}ms`,
        `--warm-up-time=${options.warmup}`,
        `--log-file=${log}`,
        url,
      ], (options.seconds + options.warmup + 30) * 1000).then((r) => ({ log, ...r })),
    );
    // Let this one's clock start before the next one's: different phases of the interval.
    await new Promise((r) => setTimeout(r, 1));
  }
  const outs = await Promise.all(runs);
  const latencies: number[] = [];
  let failed = 0;
  for (const out of outs) {
    if (!out.ok && !/requests: \d+ total/.test(out.stdout)) {
      throw new Error(`h2load failed: ${(out.stderr || out.stdout).trim().slice(-300)}`);
    }
    const m = /(\d+) failed, (\d+) errored, (\d+) timeout/.exec(out.stdout);
    if (m) failed += Number(m[1]) + Number(m[2]) + Number(m[3]);
    let text = "";
    try {
      text = await Deno.readTextFile(out.log);
      await Deno.remove(out.log);
    } catch { /* no log: counted below as no requests */ }
    for (const line of text.split("\n")) {
      const [, status, us] = line.split("\t");
      if (status === undefined) continue;
      if (!status.startsWith("2")) failed++;
      latencies.push(Number(us));
    }
  }
  return summary(latencies, options.seconds, failed);
}

/** The figures of one run's (or several pooled runs') latencies. */
function summary(latencies: number[], seconds: number, failed: number): PacedResult {
  latencies.sort((a, b) => a - b);
  return {
    p50: quantile(latencies, 0.5),
    p90: quantile(latencies, 0.9),
    p99: quantile(latencies, 0.99),
    max: quantile(latencies, 1),
    requests: latencies.length,
    rate: latencies.length / seconds,
    failed,
    seconds,
    latencies,
  };
}

/**
 * One result from several runs of the same target, their responses pooled: the bench measures
 * each proxy in slices that alternate with the other's, so that a slow phase of the shared
 * machine falls on both, and the p99 is taken over all of a target's slices.
 */
export function pooled(runs: readonly PacedResult[]): PacedResult {
  return summary(
    runs.flatMap((r) => r.latencies),
    runs.reduce((s, r) => s + r.seconds, 0),
    runs.reduce((s, r) => s + r.failed, 0),
  );
}
