/**
 * `deno task soak` (or `deno task bench --soak`): a bounded soak of sluice, for issue 12's
 * robustness evidence. Not part of CI.
 *
 *   deno run --allow-net --allow-read --allow-write --allow-run --allow-env bench/soak.ts \
 *     [--duration 300] [--warmup 60] [--workers 1] [--no-write] [--out docs/benchmark.md]
 *
 * For `--duration` seconds sluice (from a config file, health checks every second) balances three
 * backends (`bench/bench_backend.ts`, one process each) under mixed traffic from this process:
 * keep-alive GETs, a new connection per GET, 1 MB downloads, 32 KB PUT uploads (idempotent and
 * small enough to be replayed), 1 MB POST uploads (not idempotent) and slow readers (4 MB at about
 * 640 KB/s). Meanwhile one backend restarts every 30 s (SIGTERM, which it handles as a supervised
 * backend does: stop accepting, close idle connections, finish what is under way) and the config
 * is reloaded with SIGHUP every 20 s (the strategy alternates, so every reload changes something).
 * sluice's RSS is read every 5 s.
 *
 * Passes when no idempotent request failed and RSS after the warm-up stayed within 10 % (max over
 * min). A client that finds its reused keep-alive connection closed before any response byte
 * retries once on a new connection, as HTTP clients do (RFC 9112 §9.3.1); those are counted, not
 * failed. Stops by itself (a watchdog ends everything at duration + 3 minutes); writes the
 * `## Soak` section of docs/benchmark.md (bench.ts keeps that section when it rewrites the file).
 */
import { parseArgs } from "node:util";
import {
  Child,
  freePort,
  log,
  memoryOf,
  sleep,
  startFlags,
  stopAll,
  stopChildren,
} from "./proc.ts";

const ROOT = new URL("../", import.meta.url).pathname.replace(/\/$/, "");
/** What `deno task start` runs sluice with. */
const SLUICE_PERMS = startFlags();
const RESTART_EVERY = 30_000;
const RELOAD_EVERY = 20_000;
const SAMPLE_EVERY = 5_000;
const ascii = new TextEncoder();
const latin1 = new TextDecoder("latin1");

// ---------------------------------------------------------------- a small HTTP/1.1 client

/** A request's outcome as a client sees it. */
interface Outcome {
  ok: boolean;
  /** Why not. */
  error?: string;
  /** Nothing of a response arrived before the connection ended (a client may retry). */
  noResponse?: boolean;
  status?: number;
  body?: string;
  bytes: number;
}

/** One client connection; `used` once a request has gone over it. */
class ClientConn {
  used = false;
  closed = false;
  #buf = new Uint8Array(64 * 1024);
  #start = 0;
  #end = 0;

  private constructor(readonly conn: Deno.TcpConn) {}

  static async open(port: number): Promise<ClientConn> {
    const conn = await Deno.connect({ hostname: "127.0.0.1", port });
    conn.setNoDelay(true);
    return new ClientConn(conn);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    try {
      this.conn.close();
    } catch { /* already closed */ }
  }

  async #fill(): Promise<boolean> {
    if (this.#start === this.#end) this.#start = this.#end = 0;
    if (this.#end === this.#buf.length) {
      this.#buf.copyWithin(0, this.#start, this.#end);
      this.#end -= this.#start;
      this.#start = 0;
    }
    const n = await this.conn.read(this.#buf.subarray(this.#end));
    if (n === null) return false;
    this.#end += n;
    return true;
  }

  /**
   * Sends a request and reads its response (Content-Length bodies, which is what the bench
   * backends send). `slow`: read the body in 32 KB steps 50 ms apart. Keeps the body text when
   * short. Throws nothing: failures are outcomes.
   */
  async request(
    method: string,
    path: string,
    body: Uint8Array | undefined,
    close: boolean,
    slow = false,
  ): Promise<Outcome> {
    this.used = true;
    let got = 0;
    try {
      const head = `${method} ${path} HTTP/1.1\r\nhost: soak\r\n` +
        (body ? `content-length: ${body.length}\r\n` : "") +
        (close ? "connection: close\r\n" : "") + "\r\n";
      await writeAll(this.conn, ascii.encode(head));
      if (body) await writeAll(this.conn, body);
      let at: number;
      for (;;) {
        at = findHeadEnd(this.#buf, this.#start, this.#end);
        if (at >= 0) break;
        const before = this.#end - this.#start;
        if (!(await this.#fill())) {
          return {
            ok: false,
            error: "closed before the response",
            noResponse: before === 0,
            bytes: 0,
          };
        }
        got += this.#end - this.#start - before;
      }
      const text = latin1.decode(this.#buf.subarray(this.#start, at));
      this.#start = at;
      const status = Number(text.slice(9, 12));
      const length = Number(/\r\ncontent-length: *(\d+)/i.exec(text)?.[1] ?? "NaN");
      const closing = /\r\nconnection: *close/i.test(text);
      if (!Number.isFinite(length)) {
        this.close();
        return { ok: false, error: `no content-length (status ${status})`, status, bytes: 0 };
      }
      let left = length;
      let short = "";
      while (left > 0) {
        if (slow) await sleep(50, new AbortController().signal);
        if (this.#start === this.#end) {
          if (!(await this.#fill())) {
            this.close();
            return {
              ok: false,
              error: `body cut short, ${left} bytes missing`,
              status,
              bytes: length - left,
            };
          }
        }
        const n = Math.min(left, this.#end - this.#start, slow ? 32 * 1024 : Infinity);
        if (length <= 256) short += latin1.decode(this.#buf.subarray(this.#start, this.#start + n));
        this.#start += n;
        left -= n;
      }
      if (closing || close) this.close();
      return {
        ok: status >= 200 && status < 300,
        status,
        body: short,
        bytes: length,
        error: status >= 300 ? `HTTP ${status}` : undefined,
      };
    } catch (err) {
      this.close();
      return { ok: false, error: (err as Error).name, noResponse: got === 0, bytes: 0 };
    }
  }
}

async function writeAll(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
  let done = 0;
  while (done < bytes.length) done += await conn.write(bytes.subarray(done));
}

function findHeadEnd(buf: Uint8Array, from: number, to: number): number {
  for (let i = Math.max(from + 3, 3); i < to; i++) {
    if (buf[i] === 10 && buf[i - 1] === 13 && buf[i - 2] === 10 && buf[i - 3] === 13) return i + 1;
  }
  return -1;
}

// ---------------------------------------------------------------- traffic

/** Counters of one kind of traffic. */
interface Tally {
  kind: string;
  idempotent: boolean;
  requests: number;
  ok: number;
  failed: number;
  /** Reused connections found closed before any response byte, retried on a new one. */
  reconnects: number;
  bytes: number;
  errors: Map<string, number>;
}

/** What one loop of a kind does. */
interface Kind {
  kind: string;
  loops: number;
  idempotent: boolean;
  /** Pause between requests, ms. */
  pause: number;
  keepAlive: boolean;
  method: string;
  path: string;
  body?: Uint8Array;
  slow?: boolean;
  /** What the response body must say (uploads: the byte count the backend received). */
  expect?: string;
  /** Body length the response must have (downloads). */
  expectBytes?: number;
}

const PUT_BODY = new Uint8Array(32 * 1024).fill(0x70);
const POST_BODY = new Uint8Array(1_000_000).fill(0x71);
const KINDS: Kind[] = [
  {
    kind: "keep-alive GET",
    loops: 6,
    idempotent: true,
    pause: 4,
    keepAlive: true,
    method: "GET",
    path: "/",
  },
  {
    kind: "new connection per GET",
    loops: 2,
    idempotent: true,
    pause: 4,
    keepAlive: false,
    method: "GET",
    path: "/",
  },
  {
    kind: "1 MB download",
    loops: 2,
    idempotent: true,
    pause: 20,
    keepAlive: true,
    method: "GET",
    path: "/bytes/1000000",
    expectBytes: 1_000_000,
  },
  {
    kind: "32 KB PUT upload",
    loops: 2,
    idempotent: true,
    pause: 10,
    keepAlive: true,
    method: "PUT",
    path: "/upload",
    body: PUT_BODY,
    expect: `received ${PUT_BODY.length}`,
  },
  {
    kind: "1 MB POST upload",
    loops: 1,
    idempotent: false,
    pause: 50,
    keepAlive: true,
    method: "POST",
    path: "/upload",
    body: POST_BODY,
    expect: `received ${POST_BODY.length}`,
  },
  {
    kind: "slow reader (4 MB at ~640 KB/s)",
    loops: 2,
    idempotent: true,
    pause: 100,
    keepAlive: false,
    method: "GET",
    path: "/bytes/4000000",
    slow: true,
    expectBytes: 4_000_000,
  },
];

/** Runs one loop of `k` against `port` until `stop` aborts. */
async function loop(k: Kind, port: number, tally: Tally, stop: AbortSignal): Promise<void> {
  let conn: ClientConn | undefined;
  const fail = (why: string) => {
    tally.failed++;
    tally.errors.set(why, (tally.errors.get(why) ?? 0) + 1);
  };
  while (!stop.aborted) {
    tally.requests++;
    let out: Outcome | undefined;
    for (let attempt = 0; attempt < 2; attempt++) {
      let fresh = false;
      if (!conn || conn.closed) {
        try {
          conn = await ClientConn.open(port);
          fresh = true;
        } catch (err) {
          out = { ok: false, error: `connect: ${(err as Error).name}`, bytes: 0 };
          break;
        }
      }
      const reused = !fresh;
      out = await conn.request(k.method, k.path, k.body, !k.keepAlive, k.slow);
      if (!k.keepAlive) conn.close();
      // A reused connection closed under us before any response: retry once on a new one.
      if (!out.ok && out.noResponse && reused) {
        conn.close();
        tally.reconnects++;
        continue;
      }
      break;
    }
    if (!out!.ok) fail(out!.error ?? "failed");
    else if (k.expect && !out!.body?.startsWith(k.expect)) {
      fail(`unexpected body ${out!.body?.slice(0, 30)}`);
    } else if (k.expectBytes !== undefined && out!.bytes !== k.expectBytes) {
      fail(`${out!.bytes} bytes`);
    } else {
      tally.ok++;
      tally.bytes += out!.bytes + (k.body?.length ?? 0);
    }
    await sleep(k.pause, stop);
  }
  conn?.close();
}

// ---------------------------------------------------------------- the run

interface SoakResult {
  seconds: number;
  tallies: Tally[];
  rss: { t: number; rss: number }[];
  warmup: number;
  reloads: number;
  reloadFailures: number;
  restarts: number;
  workers: number;
  /** sluice's own warn/error lines (counts by text, numbers stripped). */
  complaints: Map<string, number>;
}

function configFor(port: number, backendPorts: number[], round: number, workers: number) {
  return {
    listen: { host: "127.0.0.1", port },
    workers,
    strategy: round % 2 === 0 ? "round-robin" : "least-connections",
    backends: backendPorts.map((p) => ({ url: `http://127.0.0.1:${p}` })),
    health: { path: "/", interval: "1s", timeout: "500ms" },
    log: { level: "info", format: "text" },
  };
}

async function startBackend(port: number): Promise<Child> {
  const child = new Child(`backend ${port}`, Deno.execPath(), [
    "run",
    "--allow-net",
    `${ROOT}/bench/bench_backend.ts`,
    "--ports",
    String(port),
  ], { cwd: ROOT });
  await child.waitForLines(/^backend listening on /, 1, 60_000);
  return child;
}

/** Runs the soak; resolves to its result. */
export async function soak(options: { duration: number; warmup: number; workers: number }): Promise<
  SoakResult
> {
  const tmp = await Deno.makeTempDir({ prefix: "sluice-soak-" });
  const backendPorts = [freePort(), freePort(), freePort()];
  const backends = await Promise.all(backendPorts.map(startBackend));
  const port = freePort();
  const configPath = `${tmp}/soak.json`;
  let round = 0;
  const writeConfig = () =>
    Deno.writeTextFile(
      configPath,
      JSON.stringify(configFor(port, backendPorts, round++, options.workers), null, 2),
    );
  await writeConfig();
  const sluice = new Child("sluice", Deno.execPath(), [
    "run",
    ...SLUICE_PERMS,
    `${ROOT}/main.ts`,
    "--config",
    configPath,
  ], { cwd: ROOT });
  let reloads = 0;
  let reloadFailures = 0;
  const complaints = new Map<string, number>();
  sluice.onLine((line) => {
    if (line.includes("configuration reloaded")) reloads++;
    else if (line.includes("configuration rejected")) reloadFailures++;
    const level = /\b(WARN|ERROR)\b/.exec(line);
    if (level) {
      // Group alike lines: without request ids, addresses and numbers.
      const text = line.slice(level.index).replace(/\s*requestId=\S+/g, "")
        .replace(/https?:\/\/\S+/g, "URL").replace(/\d+(\.\d+)?/g, "N").slice(0, 120);
      complaints.set(text, (complaints.get(text) ?? 0) + 1);
    }
  });
  await sluice.waitForLines(/sluice listening on/, 1, 60_000);

  const stop = new AbortController();
  const tallies = KINDS.map((k): Tally => ({
    kind: k.kind,
    idempotent: k.idempotent,
    requests: 0,
    ok: 0,
    failed: 0,
    reconnects: 0,
    bytes: 0,
    errors: new Map(),
  }));
  const loops: Promise<void>[] = [];
  KINDS.forEach((k, i) => {
    for (let j = 0; j < k.loops; j++) loops.push(loop(k, port, tallies[i], stop.signal));
  });

  const started = Date.now();
  const rss: { t: number; rss: number }[] = [];
  let restarts = 0;
  let nextRestart = started + RESTART_EVERY;
  let nextReload = started + RELOAD_EVERY;
  let nextSample = started;
  let victim = 0;
  try {
    while (Date.now() - started < options.duration * 1000 && !stopAll.signal.aborted) {
      const now = Date.now();
      if (sluice.exited) throw new Error(`sluice exited${sluice.last()}`);
      if (now >= nextSample) {
        nextSample += SAMPLE_EVERY;
        rss.push({ t: (now - started) / 1000, rss: (await memoryOf(sluice.proc.pid)).rss });
      }
      if (now >= nextReload) {
        nextReload += RELOAD_EVERY;
        await writeConfig();
        sluice.signal("SIGHUP");
      }
      if (now >= nextRestart) {
        nextRestart += RESTART_EVERY;
        const i = victim++ % backends.length;
        log(
          `soak: restarting backend ${backendPorts[i]} at ${((now - started) / 1000).toFixed(0)} s`,
        );
        await backends[i].stop(6000);
        backends[i] = await startBackend(backendPorts[i]);
        restarts++;
      }
      await sleep(200);
    }
  } finally {
    stop.abort();
    await Promise.race([Promise.all(loops), sleep(60_000, new AbortController().signal)]);
    await sluice.stop(10_000);
    await Promise.all(backends.map((b) => b.stop()));
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
  }
  return {
    seconds: (Date.now() - started) / 1000,
    tallies,
    rss,
    warmup: options.warmup,
    reloads,
    reloadFailures,
    restarts,
    workers: options.workers,
    complaints,
  };
}

/** The `## Soak` section for docs/benchmark.md, and whether the soak passed. */
export function soakReport(r: SoakResult): { md: string; passed: boolean } {
  const L: string[] = [];
  const n = (x: number) => x.toLocaleString("en-US");
  const failedIdempotent = r.tallies.filter((t) => t.idempotent).reduce((s, t) => s + t.failed, 0);
  const after = r.rss.filter((s) => s.t >= r.warmup).map((s) => s.rss);
  const min = Math.min(...after);
  const max = Math.max(...after);
  const spreadPct = (max / min - 1) * 100;
  const flat = after.length >= 2 && spreadPct <= 10;
  const passed = failedIdempotent === 0 && flat && r.reloadFailures === 0;
  const mb = (b: number) => `${(b / 2 ** 20).toFixed(1)} MB`;
  L.push("## Soak", "");
  L.push(
    `\`deno task soak\` (${new Date().toISOString().replace(/\.\d+Z$/, "Z")}, Deno ` +
      `${Deno.version.deno}, ${r.workers} worker${r.workers > 1 ? "s" : ""}): ${
        r.seconds.toFixed(0)
      } s of ` +
      "mixed traffic through sluice to three `bench/bench_backend.ts` processes, one of them " +
      `restarted every ${RESTART_EVERY / 1000} s (${r.restarts} restarts; SIGTERM, handled as a ` +
      "supervised backend does), the config reloaded with SIGHUP every " +
      `${
        RELOAD_EVERY / 1000
      } s (${r.reloads} applied, ${r.reloadFailures} rejected; the strategy ` +
      "alternates), health checks every second. Clients retry once on a new connection when a " +
      "reused keep-alive connection closes before any response byte (RFC 9112 §9.3.1).",
    "",
  );
  L.push(
    "| Traffic | idempotent | requests | ok | failed | client reconnects | MB moved (both ways) |",
  );
  L.push("|---|---|--:|--:|--:|--:|--:|");
  for (const t of r.tallies) {
    L.push(
      `| ${t.kind} | ${t.idempotent ? "yes" : "no"} | ${n(t.requests)} | ${n(t.ok)} | ${
        n(t.failed)
      } | ` +
        `${n(t.reconnects)} | ${(t.bytes / 1e6).toFixed(0)} |`,
    );
  }
  L.push("");
  L.push(
    `- Failed idempotent requests: **${n(failedIdempotent)}** (target 0: ${
      failedIdempotent === 0 ? "**met**" : "**not met**"
    }).`,
  );
  for (const t of r.tallies) {
    if (t.errors.size) {
      L.push(
        `  - ${t.kind}: ${[...t.errors].map(([e, c]) => `${e} ×${c}`).join(", ")}`,
      );
    }
  }
  L.push(
    `- RSS every ${SAMPLE_EVERY / 1000} s after the first ${r.warmup} s: ${mb(min)} to ${
      mb(max)
    }, ` +
      `a spread of ${spreadPct.toFixed(1)}% (target ≤ 10%: ${flat ? "**met**" : "**not met**"}); ` +
      `first sample ${mb(r.rss[0]?.rss ?? NaN)}, last ${mb(r.rss[r.rss.length - 1]?.rss ?? NaN)}.`,
  );
  L.push(
    `- RSS samples (MB): ${r.rss.map((s) => (s.rss / 2 ** 20).toFixed(0)).join(" ")}`,
  );
  if (r.complaints.size) {
    L.push(
      `- sluice's warnings and errors: ${
        [...r.complaints].sort((a, b) => b[1] - a[1]).slice(0, 8).map(([t, c]) => `\`${t}\` ×${c}`)
          .join("; ")
      }`,
    );
  }
  L.push(`- Verdict: ${passed ? "**passed**" : "**failed**"}.`);
  return { md: L.join("\n") + "\n", passed };
}

/**
 * Below this line docs/benchmark.md is not rewritten by `deno task bench`: the soak's section and
 * the hand-written floors and profile live there.
 */
export const KEPT_MARKER =
  "<!-- Everything below is kept when deno task bench rewrites this file. -->";

/** Replaces (or appends, below the kept marker) the `## Soak` section of the file at `path`. */
export async function writeSoakSection(path: string, section: string): Promise<void> {
  let text = "";
  try {
    text = await Deno.readTextFile(path);
  } catch { /* a new file */ }
  const at = text.indexOf("\n## Soak\n");
  if (at >= 0) {
    const next = text.indexOf("\n## ", at + 1);
    text = text.slice(0, at + 1) + section + (next >= 0 ? text.slice(next) : "");
  } else {
    if (!text.includes(KEPT_MARKER)) text = text.replace(/\n*$/, "\n\n") + KEPT_MARKER + "\n";
    text = text.replace(/\n*$/, "\n\n") + section;
  }
  await Deno.writeTextFile(path, text);
}

/** The kept part of docs/benchmark.md (from the marker on), if any. */
export function keptPartOf(text: string): string | undefined {
  const at = text.indexOf(KEPT_MARKER);
  return at < 0 ? undefined : text.slice(at);
}

/** Command line; resolves to the exit code (0 passed, 1 failed). */
export async function soakMain(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    strict: true,
    options: {
      duration: { type: "string", default: "300" },
      warmup: { type: "string", default: "60" },
      workers: { type: "string", default: "1" },
      "no-write": { type: "boolean", default: false },
      out: { type: "string", default: `${ROOT}/docs/benchmark.md` },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) {
    console.log(
      "usage: soak.ts [--duration 300] [--warmup 60] [--workers 1] [--no-write] " +
        "[--out docs/benchmark.md]   (seconds)",
    );
    return 0;
  }
  const duration = Number(values.duration);
  const warmup = Number(values.warmup);
  const workers = Number(values.workers);
  if (!(duration > 0) || !(warmup >= 0) || !(Number.isInteger(workers) && workers >= 1)) {
    console.error("soak: --duration, --warmup and --workers must be positive numbers");
    return 2;
  }
  const watchdog = setTimeout(async () => {
    log("soak: time limit reached; stopping everything");
    stopAll.abort();
    await stopChildren();
    Deno.exit(3);
  }, (duration + 180) * 1000);
  for (const signal of ["SIGINT", "SIGTERM"] as const) {
    Deno.addSignalListener(signal, async () => {
      stopAll.abort();
      await stopChildren();
      Deno.exit(130);
    });
  }
  log(`soak: ${duration} s, ${workers} worker(s)`);
  let result: SoakResult;
  try {
    result = await soak({ duration, warmup, workers });
  } catch (err) {
    log(`soak: ${(err as Error).message}`);
    await stopChildren();
    clearTimeout(watchdog);
    return 1;
  }
  clearTimeout(watchdog);
  const { md, passed } = soakReport(result);
  if (!values["no-write"]) {
    await writeSoakSection(values.out, md);
    // Keep `deno fmt --check` green, as bench.ts does.
    await new Deno.Command(Deno.execPath(), { args: ["fmt", "-q", values.out], cwd: ROOT }).output()
      .catch(() => {});
    log(`wrote the Soak section of ${values.out}`);
  }
  console.log(md);
  return passed ? 0 : 1;
}

if (import.meta.main) Deno.exit(await soakMain(Deno.args));
