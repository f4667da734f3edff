/**
 * Memory per idle keep-alive client connection: RSS of a server's process tree before and after
 * opening COUNT connections from a separate client process (`bench/idle_client.ts`), half of them
 * after one request, in two steps, so that the cost of the second half alone (the marginal cost,
 * free of one-off growth such as V8's young generation) is reported too.
 */
import { Child, memoryOf, sleep } from "./proc.ts";

/** What an idle-connection measurement found. */
export interface IdleResult {
  /** Connections held open at the end. */
  count: number;
  /** RSS of the server's process tree before and after, bytes. */
  before: number;
  after: number;
  /** (after − before) / count, bytes. */
  perConnection: number;
  /** RSS growth over the last step divided by its connections, bytes. */
  marginal: number;
}

/** Options of {@linkcode measureIdle}. */
export interface IdleOptions {
  count: number;
  /** @default 2 */
  stages?: number;
  /** Share of the connections that send one request first. @default 0.5 */
  share?: number;
  /** Settling time after each step before RSS is read, ms. @default 2000 */
  settle?: number;
}

/** Opens the connections to 127.0.0.1:`port` and measures the RSS of process `pid` and its children. */
export async function measureIdle(
  root: string,
  pid: number,
  port: number,
  options: IdleOptions,
): Promise<IdleResult> {
  const stages = options.stages ?? 2;
  const settle = options.settle ?? 2000;
  const rss = [(await memoryOf(pid)).rss];
  const opened = [0];
  // The client needs COUNT descriptors: raise its soft limit to the hard one.
  const client = new Child("idle client", "sh", [
    "-c",
    'ulimit -n "$(ulimit -Hn)"; exec "$0" "$@"',
    Deno.execPath(),
    "run",
    "--allow-net",
    `${root}/bench/idle_client.ts`,
    String(port),
    String(options.count),
    String(stages),
    String(options.share ?? 0.5),
  ], { stdin: true });
  const writer = client.proc.stdin.getWriter();
  try {
    for (let s = 0; s < stages; s++) {
      const lines = await client.waitForLines(/^(ready|failed)/, s + 1, 120_000);
      const line = lines[s];
      if (line.startsWith("failed")) throw new Error(`idle client: ${line}`);
      opened.push(Number(line.split(" ")[1]));
      await sleep(settle);
      rss.push((await memoryOf(pid)).rss);
      if (s < stages - 1) await writer.write(new TextEncoder().encode("more\n"));
    }
  } finally {
    await writer.close().catch(() => {});
    await client.stop();
  }
  const last = stages;
  return {
    count: opened[last],
    before: rss[0],
    after: rss[last],
    perConnection: (rss[last] - rss[0]) / opened[last],
    marginal: (rss[last] - rss[last - 1]) / (opened[last] - opened[last - 1]),
  };
}
