/**
 * A real DNS server for discovery tests: Debian's dnsmasq on 127.0.0.1 and a free UDP+TCP
 * port, answering A/AAAA records from a hosts file (changed live: rewrite, SIGHUP, wait for
 * its `read FILE` log line) and SRV records from `--srv-host` (changed by a restart on the same
 * port). Names under `.internal` that it does not know are NXDOMAIN; other names are REFUSED.
 * Every query is logged (`query[A] name from …`), so tests can count lookups.
 */
// Self-contained on purpose (no helpers.ts): the unit tests of lib/discovery/ then do not
// depend on the balancer and config modules compiling.
import { freePort, tool } from "../bench/proc.ts";

/** Generous limit for conditions on a busy 2-core machine. */
const PATIENCE = 30_000;

/** One SRV record (`_http._tcp.web.internal` → target:port). */
export interface SrvRecord {
  name: string;
  target: string;
  port: number;
  /** @default 0 */
  priority?: number;
  /** @default 0 */
  weight?: number;
}

/** What the server answers. */
export interface DnsRecords {
  /** Name → its addresses; IPv4 ones answer A questions, IPv6 ones AAAA. */
  hosts?: Record<string, string[]>;
  srv?: SrvRecord[];
  /** Alias → canonical name (`--cname`); the canonical name must be in `hosts`. */
  cnames?: Record<string, string>;
  /**
   * TTL of every answer (s): dnsmasq's `--local-ttl`, which covers hosts-file and SRV records.
   * @default 300
   */
  ttl?: number;
  /**
   * Domains answered locally: unknown names under them get NXDOMAIN (others REFUSED).
   * @default ["internal"]
   */
  localDomains?: string[];
}

/** A running dnsmasq. */
export interface Dnsmasq {
  /** 127.0.0.1 */
  readonly host: string;
  readonly port: number;
  /** `127.0.0.1:PORT`, for `discovery.nameServer`. */
  readonly nameServer: string;
  /** dnsmasq's log (every query), for the current process. */
  readonly log: Lines;
  /** Whether the process runs. */
  readonly running: boolean;
  /** Replaces the A/AAAA records without a restart; resolves once the new file is served. */
  setHosts(hosts: Record<string, string[]>): Promise<void>;
  /** Stops and starts it on the same port with `records` (SRV and TTL changes need this). */
  restart(records?: DnsRecords): Promise<void>;
  /** Stops it (lookups then time out) until {@linkcode Dnsmasq.start}. */
  stop(): Promise<void>;
  /** Starts it again on the same port, with the current records. */
  start(): Promise<void>;
  /** Lines of the current process's log matching `pattern` (e.g. /query\[A\] api\.internal/). */
  queries(pattern: RegExp): string[];
  /** Stops it and removes its files. */
  [Symbol.asyncDispose](): Promise<void>;
}

/** dnsmasq's path, found or installed; or, as `skip`, why tests cannot run. */
export async function findDnsmasq(): Promise<{ path?: string; skip?: string }> {
  const path = await tool("dnsmasq", "dnsmasq-base", true);
  return path ? { path } : { skip: "dnsmasq is missing and apt-get install dnsmasq-base failed" };
}

let dnsmasqPath: Promise<{ path?: string; skip?: string }> | undefined;

/** Why dnsmasq tests must be skipped here, or undefined when they can run (installs it if missing). */
export async function dnsmasqSkipReason(): Promise<string | undefined> {
  dnsmasqPath ??= findDnsmasq();
  const { skip } = await dnsmasqPath;
  if (skip) console.warn(`skipping DNS tests: ${skip}`);
  return skip;
}

function hostsText(hosts: Record<string, string[]>): string {
  return Object.entries(hosts).flatMap(([name, addrs]) => addrs.map((a) => `${a} ${name}\n`))
    .join("");
}

/** Starts dnsmasq with `records` on a free port; throws (with its log) if it does not come up. */
export async function startDnsmasq(records: DnsRecords = {}): Promise<Dnsmasq> {
  const { path, skip } = await (dnsmasqPath ??= findDnsmasq());
  if (!path) throw new Error(`dnsmasq unavailable: ${skip}`);
  // Readable by everyone: dnsmasq started as root drops to `nobody`, then re-reads on SIGHUP.
  const dir = await Deno.makeTempDir({ prefix: "sluice_dns_" });
  await Deno.chmod(dir, 0o755);
  const hostsFile = `${dir}/hosts`;
  let current: DnsRecords = { ...records };
  let seq = 0;
  const writeHosts = async (hosts: Record<string, string[]>) => {
    const tmp = `${dir}/.hosts.${seq++}`;
    await Deno.writeTextFile(tmp, hostsText(hosts));
    await Deno.chmod(tmp, 0o644);
    await Deno.rename(tmp, hostsFile); // dnsmasq re-opens the path: it never reads half a file
  };
  await writeHosts(records.hosts ?? {});

  let port = 0;
  let child: Deno.ChildProcess | undefined;
  let log!: Lines;
  let exited!: Promise<Deno.CommandStatus>;
  let running = false;

  const args = (r: DnsRecords) => [
    "--no-daemon",
    "--log-facility=-", // the log on stderr
    "--log-queries",
    `--port=${port}`,
    "--listen-address=127.0.0.1",
    "--bind-interfaces",
    "--no-resolv",
    "--no-hosts",
    "--conf-file=/dev/null",
    "--pid-file=", // none: no write to /run
    `--addn-hosts=${hostsFile}`,
    `--local-ttl=${r.ttl ?? 300}`,
    ...(r.localDomains ?? ["internal"]).map((d) => `--local=/${d}/`),
    ...Object.entries(r.cnames ?? {}).map(([alias, target]) => `--cname=${alias},${target}`),
    ...(r.srv ?? []).map((s) =>
      `--srv-host=${s.name},${s.target},${s.port},${s.priority ?? 0},${s.weight ?? 0}`
    ),
  ];

  /** Spawns on `port`; false if the port was taken, throws for any other failure. */
  const spawn = async (): Promise<boolean> => {
    const proc = new Deno.Command(path, {
      args: args(current),
      stdin: "null",
      stdout: "null",
      stderr: "piped",
    }).spawn();
    const lines = new Lines(proc.stderr);
    const status = proc.status;
    // `started` is logged once the sockets are bound; `read FILE` once the records are loaded.
    try {
      await lines.waitFor(new RegExp(`read ${escape(hostsFile)} `), 1, PATIENCE);
    } catch (err) {
      try {
        proc.kill("SIGKILL");
      } catch { /* exited */ }
      await status;
      await lines.done;
      if (lines.matching(/Address already in use/).length) return false;
      throw new Error(`dnsmasq did not start: ${(err as Error).message}`);
    }
    child = proc;
    log = lines;
    exited = status;
    running = true;
    status.then(() => running = false);
    return true;
  };

  const start = async (fixedPort: boolean) => {
    for (let tries = 0; tries < 10; tries++) {
      if (!fixedPort) port = freePort();
      if (await spawn()) return;
      if (fixedPort) throw new Error(`dnsmasq: port ${port} was taken meanwhile`);
    }
    throw new Error("dnsmasq: no free port found");
  };

  const stop = async () => {
    if (child && running) {
      try {
        child.kill("SIGTERM");
      } catch { /* exited meanwhile */ }
    }
    await exited;
    await log.done;
  };

  await start(false);
  const server: Dnsmasq = {
    host: "127.0.0.1",
    get port() {
      return port;
    },
    get nameServer() {
      return `127.0.0.1:${port}`;
    },
    get log() {
      return log;
    },
    get running() {
      return running;
    },
    async setHosts(hosts) {
      current = { ...current, hosts };
      const file = new RegExp(`read ${escape(hostsFile)} `);
      const before = log.matching(file).length;
      await writeHosts(hosts);
      child!.kill("SIGHUP");
      await log.waitFor(file, before + 1, PATIENCE);
      // Confirm from outside that the new answer is served, for every name that has addresses.
      for (const [name, addrs] of Object.entries(hosts)) {
        for (const type of ["A", "AAAA"] as const) {
          const want = addrs.filter((a) => a.includes(":") === (type === "AAAA")).sort();
          if (want.length === 0) continue;
          await waitForAnswer(server, name, type, want);
        }
      }
    },
    async restart(records) {
      await stop();
      if (records) {
        current = { ...records };
        await writeHosts(current.hosts ?? {});
      }
      await start(true);
    },
    stop,
    async start() {
      if (!running) await start(true);
    },
    queries: (pattern) => log.matching(pattern),
    async [Symbol.asyncDispose]() {
      await stop();
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    },
  };
  return server;
}

/** A stream's lines as they arrive (dnsmasq's log). */
export class Lines {
  readonly lines: string[] = [];
  readonly done: Promise<void>;
  #changed = Promise.withResolvers<void>();

  constructor(stream: ReadableStream<Uint8Array>) {
    this.done = (async () => {
      let rest = "";
      for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
        const parts = (rest + chunk).split("\n");
        rest = parts.pop()!;
        this.lines.push(...parts);
        this.#changed.resolve();
        this.#changed = Promise.withResolvers<void>();
      }
      if (rest) this.lines.push(rest);
    })();
    this.done.finally(() => this.#changed.resolve());
  }

  /** Lines matching `pattern`. */
  matching(pattern: RegExp): string[] {
    return this.lines.filter((l) => pattern.test(l));
  }

  /** Waits until `count` lines match; fails after `timeout` ms or when the stream ends first. */
  async waitFor(pattern: RegExp, count = 1, timeout = PATIENCE): Promise<void> {
    const deadline = Date.now() + timeout;
    let ended = false;
    this.done.finally(() => ended = true);
    while (this.matching(pattern).length < count) {
      const left = deadline - Date.now();
      if (ended || left <= 0) {
        throw new Error(
          `${
            ended ? "output ended" : "timed out"
          } without ${count} line(s) matching ${pattern}:\n` +
            this.lines.join("\n"),
        );
      }
      let timer: ReturnType<typeof setTimeout> | undefined;
      await Promise.race([
        this.#changed.promise,
        this.done,
        new Promise((r) => timer = setTimeout(r, Math.min(left, 200))),
      ]);
      clearTimeout(timer);
    }
  }
}

/** Polls `check` every 20 ms until it holds; fails after `timeout` ms naming `what`. */
export async function waitFor(
  check: () => boolean | Promise<boolean>,
  what: string,
  timeout = PATIENCE,
): Promise<void> {
  const deadline = Date.now() + timeout;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

function escape(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

/**
 * What the server answers for `name`, asked with Deno.resolveDns (a client independent of the
 * code under test): sorted addresses, or SRV as `priority weight port target`; [] for no answer.
 */
export async function answer(
  server: { host: string; port: number },
  name: string,
  type: "A" | "AAAA" | "SRV",
): Promise<string[]> {
  const nameServer = { ipAddr: server.host, port: server.port };
  try {
    if (type === "SRV") {
      const records = await Deno.resolveDns(name, "SRV", { nameServer });
      return records.map((r) => `${r.priority} ${r.weight} ${r.port} ${r.target}`).sort();
    }
    return (await Deno.resolveDns(name, type, { nameServer })).sort();
  } catch {
    return [];
  }
}

/** Waits until the server answers `name`/`type` with exactly `expected` (in any order). */
export async function waitForAnswer(
  server: { host: string; port: number },
  name: string,
  type: "A" | "AAAA" | "SRV",
  expected: string[],
): Promise<void> {
  const want = JSON.stringify([...expected].sort());
  await waitFor(
    async () => JSON.stringify(await answer(server, name, type)) === want,
    `${name} ${type} = ${want}`,
    PATIENCE,
  );
}
