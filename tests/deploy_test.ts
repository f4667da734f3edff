/**
 * The deployment files in deploy/ agree with the config they carry and with deno.json: the
 * ConfigMap's sluice.yaml passes `main.ts --check`, probes hit the admin port's /ready and /live,
 * grace periods outlast the drain, and the unit, the image and the Deployment run `deno run`
 * with exactly the permission flags of `deno task start`. None of it can run here (no cluster,
 * no systemd as PID 1, no image builds), so this is what can be checked.
 */
import assert from "node:assert/strict";
import { parse, parseAllDocuments } from "yaml";
import { parseDuration } from "../lib/duration.ts";

/** The repository root, with a trailing slash. */
const ROOT = new URL("../", import.meta.url).pathname;
const DEPLOY = `${ROOT}deploy/`;

/** Parsed YAML or JSON, walked freely: a wrong shape fails the assertion that reads it. */
// deno-lint-ignore no-explicit-any
type Obj = any;

// ---------------------------------------------------------------- readers

/** The words of a command line (the files here use no quoting). */
function words(line: string): string[] {
  return line.trim().split(/\s+/);
}

/** A `deno run` command line taken apart: the flags before the script, the script, its arguments. */
interface DenoRun {
  flags: string[];
  script: string;
  args: string[];
}

/** Finds `deno run` (the binary may be a path) in `argv` and splits what follows. */
function denoRun(argv: string[]): DenoRun {
  const at = argv.findIndex((w, i) => /(^|\/)deno$/.test(w) && argv[i + 1] === "run");
  assert.ok(at !== -1, `no "deno run" in ${JSON.stringify(argv)}`);
  const rest = argv.slice(at + 2);
  const script = rest.findIndex((w) => !w.startsWith("-"));
  return { flags: rest.slice(0, script), script: rest[script], args: rest.slice(script + 1) };
}

/** `deno task start` from deno.json. */
async function startTask(): Promise<DenoRun> {
  const deno = JSON.parse(await Deno.readTextFile(`${ROOT}deno.json`));
  return denoRun(words(deno.tasks.start));
}

/** The effective config of `file` as `main.ts --check` prints it (durations as strings). */
async function check(
  file: string,
): Promise<{ code: number; config: Obj; output: string }> {
  const { code, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--allow-read",
      "--allow-env=LOG_TOKENS,LOG_STREAM",
      "main.ts",
      "--check",
      "-c",
      file,
    ],
    cwd: ROOT,
    stdin: "null",
  }).output();
  const out = new TextDecoder().decode(stdout);
  const output = `${out}\n${new TextDecoder().decode(stderr)}`;
  return { code, config: code === 0 ? JSON.parse(out) : {}, output };
}

/** Milliseconds of a config duration string. */
function ms(value: string): number {
  const n = parseDuration(value);
  assert.ok(n !== undefined, `not a duration: ${value}`);
  return n;
}

interface Manifests {
  configMap: Obj;
  deployment: Obj;
  service: Obj;
  /** The ConfigMap's sluice.yaml. */
  configText: string;
}

/** deploy/kubernetes.yaml, one object per document. */
async function manifests(): Promise<Manifests> {
  const docs = parseAllDocuments(await Deno.readTextFile(`${DEPLOY}kubernetes.yaml`));
  const objects = docs.map((d) => {
    assert.deepEqual(d.errors, [], "kubernetes.yaml parses");
    return d.toJS() as Obj;
  });
  const one = (kind: string) => {
    const found = objects.filter((o) => o.kind === kind);
    assert.equal(found.length, 1, `one ${kind} in kubernetes.yaml`);
    return found[0];
  };
  const configMap = one("ConfigMap");
  const configText = configMap.data["sluice.yaml"];
  assert.equal(typeof configText, "string", "the ConfigMap holds sluice.yaml");
  return { configMap, deployment: one("Deployment"), service: one("Service"), configText };
}

/** Writes `text` to a temp file, runs `use`, removes it. */
async function withTemp<T>(
  text: string,
  use: (file: string, dir: string) => Promise<T>,
): Promise<T> {
  const dir = await Deno.makeTempDir({ prefix: "sluice_deploy_" });
  try {
    const file = `${dir}/sluice.yaml`;
    await Deno.writeTextFile(file, text);
    return await use(file, dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** The ConfigMap's config as sluice sees it (validated by `--check`). */
async function configMapConfig(m: Manifests): Promise<Obj> {
  return await withTemp(m.configText, async (file) => {
    const { code, config, output } = await check(file);
    assert.equal(code, 0, `main.ts --check rejects the ConfigMap's sluice.yaml:\n${output}`);
    return config;
  });
}

/** Resolves a probe or Service port (a number or a container port's name) to a number. */
function portNumber(port: number | string, container: Obj): number {
  if (typeof port === "number") return port;
  const named = (container.ports ?? []).find((p: Obj) => p.name === port);
  assert.ok(named, `no container port named ${port}`);
  return named.containerPort;
}

/** A systemd unit as section → key → values (keys may repeat). */
function parseUnit(text: string): Record<string, Record<string, string[]>> {
  const unit: Record<string, Record<string, string[]>> = {};
  let section = "";
  for (const raw of text.replace(/\\\n/g, " ").split("\n")) {
    const line = raw.trim();
    if (!line || line.startsWith("#") || line.startsWith(";")) continue;
    const header = /^\[(.+)\]$/.exec(line);
    if (header) {
      section = header[1];
      unit[section] ??= {};
      continue;
    }
    const eq = line.indexOf("=");
    assert.ok(eq > 0 && section, `unit line outside a section or without "=": ${line}`);
    (unit[section][line.slice(0, eq).trim()] ??= []).push(line.slice(eq + 1).trim());
  }
  return unit;
}

/** Seconds of a systemd time span (`45s`, `1min 30s`, or a bare number of seconds). */
function systemdSeconds(span: string): number {
  if (/^\d+(\.\d+)?$/.test(span)) return Number(span);
  const units: Record<string, number> = {
    ms: 0.001,
    msec: 0.001,
    s: 1,
    sec: 1,
    second: 1,
    seconds: 1,
    m: 60,
    min: 60,
    minute: 60,
    minutes: 60,
    h: 3600,
    hr: 3600,
    hour: 3600,
    hours: 3600,
  };
  let total = 0;
  let rest = span.trim();
  while (rest) {
    const m = /^(\d+(?:\.\d+)?)\s*([a-z]+)\s*/.exec(rest);
    assert.ok(m && units[m[2]] !== undefined, `not a systemd time span: ${span}`);
    total += Number(m[1]) * units[m[2]];
    rest = rest.slice(m[0].length);
  }
  return total;
}

/** The longest drain any deployed config asks for: the ConfigMap's, the repository's sluice.yaml (what the unit serves, per deploy/README.md), and the default. */
async function longestDrain(m: Manifests): Promise<number> {
  const { code, config, output } = await check(`${ROOT}sluice.yaml`);
  assert.equal(code, 0, output);
  const configMap = await configMapConfig(m);
  return Math.max(ms(config.timeouts.drain), ms(configMap.timeouts.drain), 30_000);
}

// ---------------------------------------------------------------- Kubernetes

Deno.test("deploy: the ConfigMap's sluice.yaml is valid sluice config, with the admin listener off loopback and a token", async () => {
  const m = await manifests();
  const config = await configMapConfig(m);
  assert.equal(config.admin.host, "0.0.0.0", "the kubelet probes the pod's IP");
  // --check prints the token, or "(redacted)" in versions that hide it: either way one is set.
  assert.ok(typeof config.admin.token === "string" && config.admin.token !== "", "a token is set");
  // The raw file carries the placeholder the init container replaces.
  assert.equal(parse(m.configText).admin.token, "ADMIN_TOKEN_FROM_SECRET");
});

Deno.test("deploy: the render-config init container writes the Secret's token into the config, and refuses unsafe tokens", async () => {
  const m = await manifests();
  const spec = m.deployment.spec.template.spec;
  const init = spec.initContainers.find((c: Obj) => c.name === "render-config");
  assert.ok(init, "a render-config init container");
  assert.deepEqual(init.command.slice(0, 2), ["sh", "-c"]);
  const tokenEnv = init.env.find((e: Obj) => e.name === "ADMIN_TOKEN");
  assert.deepEqual(tokenEnv.valueFrom.secretKeyRef, { name: "sluice-admin", key: "token" });
  // It reads the ConfigMap's volume and writes the volume the sluice container reads.
  const mountOf = (c: Obj, name: string) =>
    c.volumeMounts.find((v: Obj) => v.name === name)?.mountPath;
  const volume = (name: string) => spec.volumes.find((v: Obj) => v.name === name);
  const templateVolume = init.volumeMounts.find((v: Obj) =>
    volume(v.name).configMap?.name === m.configMap.metadata.name
  );
  assert.ok(templateVolume, "the init container mounts the ConfigMap");
  const sluice = spec.containers.find((c: Obj) => c.name === "sluice");
  const configFile: string = sluice.args[sluice.args.indexOf("--config") + 1];
  const configDir = configFile.slice(0, configFile.lastIndexOf("/"));
  const shared = sluice.volumeMounts.find((v: Obj) => v.mountPath === configDir);
  assert.ok(shared, `sluice mounts a volume at ${configDir}`);
  assert.equal(mountOf(init, shared.name), configDir, "the init container writes that volume");

  // Run the script itself, with its two directories moved into a temp dir.
  await withTemp(m.configText, async (_, dir) => {
    await Deno.mkdir(`${dir}/out`);
    const script = (init.command[2] as string)
      .replaceAll(`${templateVolume.mountPath}/`, `${dir}/`)
      .replaceAll(`${configDir}/`, `${dir}/out/`);
    const run = (token: string) =>
      new Deno.Command("sh", { args: ["-c", script], env: { ADMIN_TOKEN: token } }).output();
    const token = Array.from(crypto.getRandomValues(new Uint8Array(32)))
      .map((b) => b.toString(16).padStart(2, "0")).join("");
    const ok = await run(token);
    assert.equal(ok.code, 0, new TextDecoder().decode(ok.stderr));
    const rendered = `${dir}/out/${configFile.slice(configDir.length + 1)}`;
    const text = await Deno.readTextFile(rendered);
    assert.equal(parse(text).admin.token, token);
    assert.ok(!text.includes("ADMIN_TOKEN_FROM_SECRET"));
    const { code, output } = await check(rendered);
    assert.equal(code, 0, output);
    for (
      const bad of [
        "",
        "a&b-0123456789abcdef",
        "a/b\\c-0123456789abcdef",
        "two words here and more",
      ]
    ) {
      const refused = await run(bad);
      assert.notEqual(refused.code, 0, `token ${JSON.stringify(bad)} accepted`);
      assert.match(new TextDecoder().decode(refused.stderr), /sluice-admin: token must use only/);
    }
  });
});

Deno.test("deploy: the Deployment probes /ready and /live on the admin port, serves the listen port, and outlasts the drain", async () => {
  const m = await manifests();
  const config = await configMapConfig(m);
  const spec = m.deployment.spec.template.spec;
  const sluice = spec.containers.find((c: Obj) => c.name === "sluice");
  assert.ok(sluice, "a container named sluice");

  const ready = sluice.readinessProbe.httpGet;
  const live = sluice.livenessProbe.httpGet;
  assert.equal(ready.path, "/ready");
  assert.equal(live.path, "/live");
  assert.equal(portNumber(ready.port, sluice), config.admin.port);
  assert.equal(portNumber(live.port, sluice), config.admin.port);
  for (const probe of [ready, live]) assert.ok((probe.scheme ?? "HTTP") === "HTTP");
  assert.equal(portNumber("http", sluice), config.listen.port);

  // SIGTERM comes after the preStop hook, and the drain after that: the grace period covers both.
  const preStop = sluice.lifecycle?.preStop;
  const pause = preStop?.sleep?.seconds ??
    (preStop?.exec?.command?.[0] === "sleep" ? Number(preStop.exec.command[1]) : 0);
  const grace = spec.terminationGracePeriodSeconds * 1000;
  const drain = await longestDrain(m);
  assert.ok(
    grace > pause * 1000 + drain,
    `terminationGracePeriodSeconds ${grace / 1000}s must exceed preStop ${pause}s + drain ${
      drain / 1000
    }s`,
  );

  const labels = m.deployment.spec.template.metadata.labels;
  for (const [k, v] of Object.entries(m.deployment.spec.selector.matchLabels)) {
    assert.equal(labels[k], v, `the selector matches the pod label ${k}`);
  }
  assert.equal(spec.securityContext.runAsNonRoot, true);
  assert.equal(sluice.securityContext.allowPrivilegeEscalation, false);
  assert.equal(sluice.securityContext.readOnlyRootFilesystem, true);
});

Deno.test("deploy: the Deployment and the Containerfile run deno run with exactly the start task's permissions", async () => {
  const start = await startTask();
  const m = await manifests();
  const sluice = m.deployment.spec.template.spec.containers.find((c: Obj) => c.name === "sluice");
  const pod = denoRun(sluice.command);
  assert.deepEqual(pod.flags, start.flags);
  assert.equal(pod.script, start.script);
  assert.deepEqual(pod.args, [], "sluice's own flags are in args");

  const file = await Deno.readTextFile(`${DEPLOY}Containerfile`);
  const instruction = (name: string) => {
    const lines = file.split("\n").filter((l) => l.startsWith(`${name} `));
    assert.equal(lines.length, 1, `one ${name} in the Containerfile`);
    return lines[0].slice(name.length + 1).trim();
  };
  assert.match(
    instruction("FROM"),
    /^denoland\/deno:(debian-)?2\.9\.\d+$/,
    "pinned to a 2.9 release",
  );
  const entrypoint = JSON.parse(instruction("ENTRYPOINT"));
  const cmd = JSON.parse(instruction("CMD"));
  const image = denoRun(entrypoint);
  assert.deepEqual(image.flags, start.flags);
  assert.equal(image.script, start.script);
  // The Deployment spells out the image's entrypoint and passes the same arguments.
  assert.deepEqual(sluice.command, entrypoint);
  assert.deepEqual(sluice.args, cmd);
  assert.equal(cmd[0], "--config");

  // Everything main.ts loads is in what the Containerfile copies.
  const copied = file.split("\n").filter((l) => l.startsWith("COPY "))
    .flatMap((l) => words(l).slice(1, -1));
  const info = await new Deno.Command(Deno.execPath(), {
    args: ["info", "--json", "main.ts"],
    cwd: ROOT,
  }).output();
  assert.equal(info.code, 0, new TextDecoder().decode(info.stderr));
  const modules: { specifier: string }[] =
    JSON.parse(new TextDecoder().decode(info.stdout)).modules;
  const local = modules.map((mod) => mod.specifier).filter((s) => s.startsWith("file:"))
    .map((s) => new URL(s).pathname.slice(ROOT.length));
  assert.ok(local.includes("main.ts"));
  for (const path of local) {
    assert.ok(
      copied.some((c) => c === path || (c.endsWith("/") && path.startsWith(c))),
      `${path} is not copied into the image`,
    );
  }
  assert.ok(copied.includes("deno.lock"), "the lockfile pins the image's dependencies");
});

Deno.test("deploy: the Service sends its port to the pods' listen port", async () => {
  const m = await manifests();
  const config = await configMapConfig(m);
  const pod = m.deployment.spec.template;
  const sluice = pod.spec.containers.find((c: Obj) => c.name === "sluice");
  for (const [k, v] of Object.entries(m.service.spec.selector)) {
    assert.equal(pod.metadata.labels[k], v, `the Service selects pods by ${k}`);
  }
  const [port] = m.service.spec.ports;
  assert.equal(portNumber(port.targetPort, sluice), config.listen.port);
});

// ---------------------------------------------------------------- systemd

Deno.test("deploy: the systemd unit runs the start task's permissions, reloads with SIGHUP, outlasts the drain and is sandboxed", async () => {
  const unit = parseUnit(await Deno.readTextFile(`${DEPLOY}sluice.service`));
  const service = unit.Service;
  const one = (key: string) => {
    assert.equal(service[key]?.length, 1, `one ${key}= in [Service]`);
    return service[key][0];
  };
  const start = await startTask();
  const exec = denoRun(words(one("ExecStart")));
  assert.ok(one("ExecStart").startsWith("/"), "ExecStart names an absolute path");
  assert.deepEqual(exec.flags, start.flags);
  assert.equal(exec.script.split("/").pop(), start.script);
  assert.deepEqual(exec.args.slice(0, 1), ["--config"]);

  assert.match(one("ExecReload"), /^\/bin\/kill -(HUP|SIGHUP|s HUP) \$MAINPID$/);
  assert.equal(one("KillSignal"), "SIGTERM");
  const stop = systemdSeconds(one("TimeoutStopSec")) * 1000;
  const drain = await longestDrain(await manifests());
  assert.ok(stop > drain, `TimeoutStopSec ${stop / 1000}s must exceed the drain ${drain / 1000}s`);

  const expected: Record<string, string> = {
    DynamicUser: "yes",
    ProtectSystem: "strict",
    NoNewPrivileges: "yes",
    CapabilityBoundingSet: "CAP_NET_BIND_SERVICE",
    AmbientCapabilities: "CAP_NET_BIND_SERVICE",
  };
  for (const [key, value] of Object.entries(expected)) assert.equal(one(key), value, key);
  assert.ok(Number(one("LimitNOFILE")) >= 65_536);
  // V8's JIT writes code pages: this option would stop deno at start.
  assert.equal(service.MemoryDenyWriteExecute, undefined);
  assert.deepEqual(unit.Install?.WantedBy, ["multi-user.target"]);
});

const systemdAnalyze = await (async () => {
  try {
    const out = await new Deno.Command("systemd-analyze", { args: ["--version"] }).output();
    return out.success;
  } catch {
    return false;
  }
})();
if (!systemdAnalyze) {
  console.log("deploy_test: systemd-analyze is not installed; the verify test is skipped");
}

Deno.test({
  name:
    "deploy: systemd-analyze verify accepts the unit (on a copy whose ExecStart runs this deno binary)",
  ignore: !systemdAnalyze,
  async fn() {
    const text = await Deno.readTextFile(`${DEPLOY}sluice.service`);
    // verify fails when the ExecStart binary does not exist, and /usr/local/bin/deno need not
    // exist on this machine: the copy points at the deno running this test instead.
    const deno = await Deno.realPath(Deno.execPath());
    const copy = text.replace(/^ExecStart=\S+/m, `ExecStart=${deno}`);
    assert.notEqual(copy, text);
    const dir = await Deno.makeTempDir({ prefix: "sluice_unit_" });
    try {
      const file = `${dir}/sluice.service`;
      await Deno.writeTextFile(file, copy);
      const verify = await new Deno.Command("systemd-analyze", { args: ["verify", file] })
        .output();
      const stderr = new TextDecoder().decode(verify.stderr);
      assert.equal(verify.code, 0, stderr);
      // Unknown keys and bad values are only warnings (exit 0): none may mention the unit.
      const ours = stderr.split("\n").filter((l) => l.includes("sluice.service"));
      assert.deepEqual(ours, [], stderr);

      const security = await new Deno.Command("systemd-analyze", {
        args: ["security", "--offline=yes", "--no-pager", file],
      }).output();
      const report = new TextDecoder().decode(security.stdout);
      const level = /Overall exposure level for \S+: (\d+(?:\.\d+)?)/.exec(report);
      if (level) {
        console.log(`systemd-analyze security: exposure ${level[1]} (0 is best, 10 worst)`);
        assert.ok(Number(level[1]) < 3, report);
      } else {
        console.log("systemd-analyze security --offline is not supported here; not rated");
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
