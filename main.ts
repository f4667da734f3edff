/**
 * sluice: an HTTP load balancer for Deno.
 *
 *   deno run --allow-net --allow-read main.ts --config sluice.yaml
 *   deno run --allow-net main.ts --backend http://127.0.0.1:8081 --backend http://127.0.0.1:8082
 */
import { basename, dirname, resolve } from "node:path";
import { parseArgs } from "node:util";
import denoJson from "./deno.json" with { type: "json" };
import { checkAdminAddress, startAdmin } from "./lib/admin/server.ts";
import { type Balancer, startBalancer } from "./lib/balancer.ts";
import {
  type Config,
  ConfigError,
  ConfigFileError,
  configWarnings,
  formatConfig,
  loadConfig,
  type Overrides,
} from "./lib/config.ts";
import { configFiles } from "./lib/config_files.ts";
import { Logger } from "./lib/log.ts";

/** The version printed by `--version`. */
export const VERSION: string = denoJson.version;

const USAGE = `sluice ${VERSION}: an HTTP load balancer

Usage: sluice [options]

  -c, --config FILE          YAML or JSON config file
      --host HOST            listen address (default 0.0.0.0)
      --port PORT            listen port (default 8080)
      --backend URL          backend URL; repeat for more (replaces the file's list)
      --strategy NAME        round-robin, weighted-round-robin, least-connections, random,
                             power-of-two, latency, consistent-hash, maglev
      --workers N            threads serving traffic: a number or auto (default 1)
      --health-path PATH     health check path (default /)
      --health-interval DUR  time between health checks (default 10s)
      --health-timeout DUR   health check timeout (default 2s, or the interval if shorter)
      --log-level LEVEL      debug, info, warn, error (default info)
      --log-format FORMAT    text or json (default text)
      --check                validate the config, print it (or every error), and exit 0 or 1
      --watch                reload when the config file or a file it names (hooks,
                             certificates) changes (SIGHUP always reloads)
  -h, --help                 show this help
  -V, --version              show the version

Flags override the file; the file overrides the defaults. Durations: 250ms, 2s, 1m.`;

function parse(args: string[]) {
  return parseArgs({
    args,
    strict: true,
    allowPositionals: false,
    options: {
      config: { type: "string", short: "c" },
      host: { type: "string" },
      port: { type: "string" },
      backend: { type: "string", multiple: true },
      strategy: { type: "string" },
      workers: { type: "string" },
      "health-path": { type: "string" },
      "health-interval": { type: "string" },
      "health-timeout": { type: "string" },
      "log-level": { type: "string" },
      "log-format": { type: "string" },
      check: { type: "boolean" },
      watch: { type: "boolean" },
      help: { type: "boolean", short: "h" },
      version: { type: "boolean", short: "V" },
    },
  }).values;
}

/** Runs the command line; resolves to the exit code. */
export async function main(args: string[]): Promise<number> {
  let flags: ReturnType<typeof parse>;
  try {
    flags = parse(args);
  } catch (err) {
    console.error(`sluice: ${(err as Error).message}\nRun with --help for usage.`);
    return 1;
  }
  if (flags.help) {
    console.log(USAGE);
    return 0;
  }
  if (flags.version) {
    console.log(`sluice ${VERSION}`);
    return 0;
  }
  const overrides: Overrides = {
    host: flags.host,
    port: flags.port,
    backends: flags.backend,
    strategy: flags.strategy,
    healthPath: flags["health-path"],
    healthInterval: flags["health-interval"],
    healthTimeout: flags["health-timeout"],
    logLevel: flags["log-level"],
    logFormat: flags["log-format"],
    workers: flags.workers,
  };
  const path = flags.config;
  let config: Config;
  try {
    config = await loadConfig(path, overrides);
  } catch (err) {
    if (err instanceof ConfigFileError) {
      console.error(`sluice: cannot read the configuration file:\n${err.problems[0]}`);
      return 1;
    }
    if (!(err instanceof ConfigError)) throw err;
    console.error(`sluice: invalid configuration${path ? ` in ${path}` : ""}:`);
    for (const problem of err.problems) console.error(problem);
    return 1;
  }
  for (const warning of configWarnings(config)) console.error(`sluice: warning: ${warning}`);
  if (flags.check) {
    console.log(formatConfig(config));
    return 0;
  }

  const log = new Logger(config.log.level, config.log.format);
  // An error no request awaited (a hook's timer, say) is logged; it must not end the balancer.
  globalThis.addEventListener("error", (event) => {
    event.preventDefault();
    log.error("uncaught error; still serving", {
      error: String((event.error as Error)?.stack ?? event.message),
    });
  });
  globalThis.addEventListener("unhandledrejection", (event) => {
    event.preventDefault();
    log.error("unhandled promise rejection; still serving", {
      error: String((event.reason as Error)?.stack ?? event.reason),
    });
  });
  // Listen for SIGHUP before anything starts: its default action would end the process.
  let onHangup = () => void (hangupEarly = true);
  let hangupEarly = false;
  const hangup = () => onHangup();
  Deno.addSignalListener("SIGHUP", hangup);
  // --watch starts before the balancer too, for the same reason: a file changed while it starts
  // is remembered and reloaded once it runs. It watches the folders of the config file and of
  // every file the config names (hooks, certificates): editors and ConfigMaps replace a file by
  // renaming over it. When a reload changes the set of files, the watcher follows.
  let onFileChange: () => void | Promise<void> = () => void (changedEarly = true);
  let changedEarly = false;
  let watcher: Deno.FsWatcher | undefined;
  let debounce: ReturnType<typeof setTimeout> | undefined;
  let watched = new Set<string>();
  const watch = (current: Config) => {
    watcher?.close();
    const files = watched = new Set([resolve(path!), ...configFiles(current)]);
    const w = watcher = Deno.watchFs([...new Set([...files].map((f) => dirname(f)))], {
      recursive: false,
    });
    (async () => {
      for await (const event of w) {
        if (!event.paths.some((p) => files.has(p) || basename(p).startsWith(".."))) continue;
        // Editors write in several steps; reload once they are done.
        clearTimeout(debounce);
        debounce = setTimeout(() => void onFileChange(), 200);
      }
    })();
  };
  if (flags.watch && path) watch(config);
  /** Logs why sluice cannot start and lets go of what listens for a reload: exit code 1. */
  const cannotStart = (what: string, err: unknown) => {
    log.error(`${what}: ${(err as Error).message}`);
    Deno.removeSignalListener("SIGHUP", hangup);
    watcher?.close();
    clearTimeout(debounce);
    return 1;
  };
  let balancer: Balancer;
  try {
    if (config.admin) checkAdminAddress(config.admin);
  } catch (err) {
    return cannotStart("cannot start the admin listener", err);
  }
  try {
    balancer = await startBalancer(config, log);
  } catch (err) {
    return cannotStart("cannot start", err);
  }
  let admin: Awaited<ReturnType<typeof startAdmin>> | undefined;
  try {
    admin = config.admin ? await startAdmin(balancer, config.admin) : undefined;
  } catch (err) {
    const code = cannotStart("cannot start the admin listener", err);
    await balancer.shutdown();
    return code;
  }

  // One reload at a time: a SIGHUP during a --watch reload waits for it.
  let reloading = Promise.resolve();
  const reload = (why: string) => reloading = reloading.then(() => reloadOnce(why));
  const reloadOnce = async (why: string) => {
    if (!path) {
      log.warn(`${why}: no --config file to reload`);
      return;
    }
    try {
      const next = await loadConfig(path, overrides);
      await balancer.reload(next);
      for (const warning of configWarnings(next)) log.warn(warning);
      balancer.stats.reloads.inc(["success"]);
      log.info(`configuration reloaded (${why})`, { version: balancer.version });
    } catch (err) {
      balancer.stats.reloads.inc(["failure"]);
      const problems = err instanceof ConfigError
        ? err.problems
        : [(err as Error).message ?? String(err)];
      log.error(`configuration rejected (${why}); keeping the previous one`);
      for (const problem of problems) log.error(`invalid configuration: ${problem}`);
    }
  };

  // The admin listener outlives the drain so that /ready answers 503 while requests finish.
  const stop = async () => {
    await balancer.shutdown();
    await admin?.shutdown();
  };
  const signals: [Deno.Signal, () => void][] = [
    ["SIGINT", () => void stop()],
    ["SIGTERM", () => void stop()],
  ];
  for (const [signal, handler] of signals) Deno.addSignalListener(signal, handler);
  onHangup = () => void reload("SIGHUP");
  if (hangupEarly) onHangup();
  onFileChange = async () => {
    await reload("file changed");
    const files = [resolve(path!), ...configFiles(balancer.config)];
    if (files.some((f) => !watched.has(f))) watch(balancer.config);
  };
  if (changedEarly) void onFileChange();

  await balancer.finished;
  await stop();
  watcher?.close();
  clearTimeout(debounce);
  Deno.removeSignalListener("SIGHUP", hangup);
  for (const [signal, handler] of signals) Deno.removeSignalListener(signal, handler);
  return 0;
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
