/**
 * The documentation checked against the code, so it cannot drift: every key of the config schema
 * in docs/configuration.md with its true default, every metric (and its labels), flag, task and
 * admin endpoint in docs/operations.md, every YAML example valid, every relative link and anchor
 * resolving, and a table of contents at the top of every page.
 */
import assert from "node:assert/strict";
import { parse as parseYaml } from "yaml";
import { configJsonSchema, validateConfig } from "../lib/config.ts";
import { parseDuration } from "../lib/duration.ts";

const ROOT = new URL("../", import.meta.url);
const read = (path: string) => Deno.readTextFileSync(new URL(path, ROOT));

/** The pages this test holds to every rule (docs/benchmark.md is generated: links only). */
const PAGES = [
  "README.md",
  "docs/configuration.md",
  "docs/routing.md",
  "docs/operations.md",
  "docs/design.md",
];
const ALL_PAGES = [...PAGES, "docs/benchmark.md"];

type Schema = Record<string, unknown> & {
  anyOf?: Schema[];
  properties?: Record<string, Schema>;
  items?: Schema;
  additionalProperties?: Schema | boolean;
  type?: string | string[];
};

/**
 * Every key path of the config schema: `listen.tls.minVersion`, `backends[].url`,
 * `pools.NAME.health.path`, `routes[].rateLimit.key`. A list item is `[]`; a record's key (a
 * pool name) is `NAME`; `listen`, one mapping or a list of them, is written as the mapping.
 */
function schemaPaths(schema: Schema, prefix = "", out = new Set<string>()): Set<string> {
  if (schema.anyOf) {
    const mapping = schema.anyOf.some((o) => o.properties !== undefined);
    for (const option of schema.anyOf) {
      // One mapping or a list of the same mappings: the list's items have the mapping's paths.
      if (option.type === "array" && option.items && mapping) {
        schemaPaths(option.items, prefix, out);
      } else schemaPaths(option, prefix, out);
    }
    return out;
  }
  if (schema.type === "array" && schema.items) return schemaPaths(schema.items, `${prefix}[]`, out);
  for (const [key, value] of Object.entries(schema.properties ?? {})) {
    const path = prefix ? `${prefix}.${key}` : key;
    out.add(path);
    schemaPaths(value, path, out);
  }
  const record = schema.additionalProperties;
  if (typeof record === "object" && (record.properties || record.anyOf)) {
    schemaPaths(record, `${prefix}.NAME`, out);
  }
  return out;
}

/** Markdown without fenced code blocks (their text is not prose: no links, no headings). */
function prose(text: string): string {
  return text.replace(/^```[^\n]*\n[\s\S]*?^```$/gm, "");
}

/** Every inline code span of a page's prose. */
function codeSpans(text: string): Set<string> {
  return new Set([...prose(text).matchAll(/`([^`\n]+)`/g)].map((m) => m[1]));
}

/** Fenced blocks of one language, with the heading they sit under. */
function fenced(text: string, lang: string): { heading: string; body: string }[] {
  const out: { heading: string; body: string }[] = [];
  let heading = "";
  const lines = text.split("\n");
  for (let i = 0; i < lines.length; i++) {
    const h = /^#{1,6} (.*)$/.exec(lines[i]);
    if (h) heading = h[1];
    if (lines[i].trim() === "```" + lang) {
      const start = i + 1;
      while (++i < lines.length && lines[i].trim() !== "```");
      out.push({ heading, body: lines.slice(start, i).join("\n") });
    }
  }
  return out;
}

/** GitHub's anchor for a heading: lower case, punctuation dropped, each space a hyphen. */
function slug(heading: string): string {
  return heading
    .replace(/\[([^\]]*)\]\([^)]*\)/g, "$1")
    .trim()
    .toLowerCase()
    .replace(/[^\p{L}\p{N}\s_-]/gu, "")
    .replace(/\s/g, "-");
}

/** The anchors a page's headings make (repeats get -1, -2, … as on GitHub). */
function anchors(text: string): Set<string> {
  const seen = new Map<string, number>();
  const out = new Set<string>();
  for (const m of prose(text).matchAll(/^#{1,6} (.+)$/gm)) {
    const base = slug(m[1]);
    const n = seen.get(base) ?? 0;
    seen.set(base, n + 1);
    out.add(n === 0 ? base : `${base}-${n}`);
  }
  return out;
}

/** Table rows of a page as cells, with the header cells of the table they belong to. */
function tableRows(text: string): { header: string[]; cells: string[] }[] {
  const rows: { header: string[]; cells: string[] }[] = [];
  let header: string[] | undefined;
  const split = (line: string) =>
    line.trim().replace(/^\||\|$/g, "").split("|").map((c) => c.trim());
  for (const line of prose(text).split("\n")) {
    if (!line.trim().startsWith("|")) {
      header = undefined;
      continue;
    }
    const cells = split(line);
    if (!header) header = cells;
    else if (!cells.every((c) => /^:?-+:?$/.test(c))) rows.push({ header, cells });
  }
  return rows;
}

const SIZE_UNITS: Record<string, number> = { "": 1, b: 1, kb: 1024, mb: 1024 ** 2, gb: 1024 ** 3 };
function parseSize(text: string): number | undefined {
  const m = /^(\d+)\s*(b|kb|mb|gb)?$/i.exec(text.trim());
  return m ? Number(m[1]) * SIZE_UNITS[(m[2] ?? "").toLowerCase()] : undefined;
}

/**
 * The value at a key path (`a.b`, `routes[].x`), from the first list item that has it; a list
 * where the path expects a mapping (`listen`) is searched the same way.
 */
function valueAt(value: unknown, path: string): unknown {
  let current: unknown[] = [value];
  for (const part of path.split(".")) {
    const key = part.replace(/\[\]$/, "");
    current = current.flatMap((v) => {
      const items = Array.isArray(v) ? v : [v];
      return items.flatMap((item) => {
        if (item === null || typeof item !== "object") return [];
        const next = (item as Record<string, unknown>)[key];
        if (next === undefined) return [];
        return part.endsWith("[]") && Array.isArray(next) ? next : [next];
      });
    });
  }
  return current[0];
}

/** Whether a documented default (a code span) says `actual`. */
function sameDefault(documented: string, actual: unknown): boolean {
  const text = documented.replace(/^"|"$/g, "");
  if (typeof actual === "number") {
    return parseDuration(text) === actual || parseSize(text) === actual || Number(text) === actual;
  }
  if (typeof actual === "boolean" || typeof actual === "string") return text === String(actual);
  return JSON.stringify(actual) === text.replace(/\s/g, "");
}

// ---------------------------------------------------------------- docs/configuration.md

Deno.test("docs: every key of the config schema is in docs/configuration.md as `path`", () => {
  const paths = schemaPaths(configJsonSchema() as Schema);
  assert.ok(paths.size > 100, `only ${paths.size} paths found: the walk is broken`);
  for (const sample of ["listen.tls.minVersion", "backends[].url", "pools.NAME.health.path"]) {
    assert.ok(paths.has(sample), `the walk misses ${sample}`);
  }
  const spans = codeSpans(read("docs/configuration.md"));
  const missing = [...paths].filter((p) => !spans.has(p));
  assert.deepEqual(missing, [], `keys missing from docs/configuration.md: ${missing.join(", ")}`);
});

Deno.test("docs: every default in docs/configuration.md is the one the code applies", () => {
  // A config with one of everything optional, so that each section's defaults are filled in;
  // what it sets itself is no default.
  const input = {
    listen: [{ port: 8080 }, { port: 8443, tls: { certificates: [{ cert: "c", key: "k" }] } }],
    backends: [
      { url: "http://127.0.0.1:8081" },
      { url: "https://127.0.0.1:8443", tls: {} },
      { dns: "api.internal", port: 8080 },
    ],
    routes: [
      { path: "/a", pool: "default", rateLimit: { perSecond: 5 } },
      { path: "/b", redirect: { to: "/x" } },
      { path: "/c", respond: {} },
    ],
    sticky: { cookie: "S" },
    admin: {},
    accessLog: {},
  };
  const effective = validateConfig(input);
  const rows = tableRows(read("docs/configuration.md"));
  let checked = 0;
  const wrong: string[] = [];
  for (const { header, cells } of rows) {
    const column = header.findIndex((h) => h.toLowerCase() === "default");
    const key = /^`([^`]+)`$/.exec(cells[0] ?? "")?.[1];
    if (column === -1 || !key || key.includes("NAME") || valueAt(input, key) !== undefined) {
      continue;
    }
    const actual = valueAt(effective, key);
    if (actual === undefined || (typeof actual === "object" && !Array.isArray(actual))) continue;
    const documented = /`([^`]+)`/.exec(cells[column] ?? "")?.[1];
    checked++;
    if (documented === undefined || !sameDefault(documented, actual)) {
      wrong.push(`${key}: documented ${cells[column]}, the code applies ${JSON.stringify(actual)}`);
    }
  }
  assert.ok(checked > 50, `only ${checked} defaults were compared: are the tables there?`);
  assert.deepEqual(wrong, []);
});

Deno.test("docs: every YAML example is a valid configuration", () => {
  const problems: string[] = [];
  for (const page of PAGES) {
    for (const { heading, body } of fenced(read(page), "yaml")) {
      let raw: Record<string, unknown>;
      try {
        raw = parseYaml(body) ?? {};
        // A fragment about one section is checked with a backend to balance over.
        if (raw.backends === undefined && raw.pools === undefined) {
          raw = { ...raw, backends: [{ url: "http://127.0.0.1:8081" }] };
        }
        validateConfig(raw);
      } catch (err) {
        problems.push(`${page} (under "${heading}"): ${(err as Error).message}`);
      }
    }
  }
  assert.deepEqual(problems, []);
});

// ---------------------------------------------------------------- README.md

Deno.test("docs: the README's configuration example passes validateConfig as it is", () => {
  const readme = read("README.md");
  const examples = fenced(readme, "yaml");
  assert.equal(examples.length, 1, "the README has one configuration example");
  const config = validateConfig(parseYaml(examples[0].body));
  // It shows what it says it shows: pools, routes and a TLS listener.
  assert.ok(config.pools.length >= 2, "named pools");
  assert.ok((config.routes?.length ?? 0) >= 2, "routes");
  assert.ok(Array.isArray(config.listen) && config.listen.some((l) => l.tls), "a TLS listener");
});

Deno.test("docs: the README's quick start pins Deno for npx and keeps the benchmark markers", () => {
  const readme = read("README.md");
  for (
    const command of ["npx -y deno@2.9 task demo", "npx -y deno@2.9 task test", "deno task demo"]
  ) {
    assert.ok(readme.includes(command), `README.md lacks ${command}`);
  }
  assert.match(readme, /<!-- bench:summary -->[\s\S]*<!-- \/bench:summary -->/);
  for (const page of ALL_PAGES.filter((p) => p.startsWith("docs/"))) {
    assert.ok(readme.includes(`](${page}`), `README.md links ${page}`);
  }
  assert.ok(
    readme.split("\n").length < 200,
    "README.md stays short enough to read in five minutes",
  );
});

// ---------------------------------------------------------------- docs/operations.md

Deno.test("docs: every metric in lib/stats.ts is in docs/operations.md with its labels", () => {
  const source = read("lib/stats.ts");
  const metrics = [
    ...source.matchAll(/new (?:Counter|Gauge|Histogram)\(\s*"(sluice_\w+)",[\s\S]*?\[([^\]]*)\]/g),
  ].map((m) => ({ name: m[1], labels: [...m[2].matchAll(/"(\w+)"/g)].map((l) => l[1]) }));
  assert.ok(metrics.length >= 20, `only ${metrics.length} metrics found in lib/stats.ts`);
  const lines = prose(read("docs/operations.md")).split("\n");
  const problems: string[] = [];
  for (const { name, labels } of metrics) {
    const row = lines.find((l) => l.startsWith("|") && l.includes("`" + name + "`"));
    if (!row) {
      problems.push(`${name}: no table row`);
      continue;
    }
    for (const label of labels) {
      if (!row.includes("`" + label + "`")) problems.push(`${name}: label ${label} not in its row`);
    }
  }
  assert.deepEqual(problems, []);
});

Deno.test("docs: every command-line flag and deno task is in docs/operations.md", () => {
  const main = read("main.ts");
  const usage = /const USAGE = `([\s\S]*?)`;/.exec(main)![1];
  const flags = [...new Set([...usage.matchAll(/(?<![\w-])--[a-z][a-z-]*/g)].map((m) => m[0]))];
  assert.ok(flags.length >= 10, `only ${flags.length} flags found in main.ts`);
  const spans = [...codeSpans(read("docs/operations.md"))];
  const missing = flags.filter((f) =>
    !spans.some((s) => new RegExp(`(^|[\\s,])${f}(?![\\w-])`).test(s))
  );
  assert.deepEqual(missing, [], "flags missing from docs/operations.md");
  const tasks = Object.keys(JSON.parse(read("deno.json")).tasks);
  const text = read("docs/operations.md");
  assert.deepEqual(tasks.filter((t) => !text.includes(`deno task ${t}`)), [], "tasks missing");
});

Deno.test("docs: every admin endpoint is in docs/operations.md", () => {
  const api = read("lib/admin/api.ts");
  const pool = /const P = "([^"]+)"/.exec(api)![1];
  const paths = new Set<string>();
  for (const m of api.matchAll(/pattern: (?:\/\^(.*?)\$\/|new RegExp\(`\^(.*?)\$`\))/g)) {
    const pattern = (m[1] ?? m[2]).replace("${P}", pool);
    paths.add(
      pattern.replaceAll("\\/", "/").replace("/api/pools/([^/]+)", "/api/pools/{pool}")
        .replace("([^/]+)", "{id}"),
    );
  }
  for (const m of read("lib/admin/server.ts").matchAll(/path === "(\/[a-z/]+)"/g)) paths.add(m[1]);
  assert.ok(paths.size >= 15, `only ${paths.size} endpoints found`);
  const text = read("docs/operations.md");
  const missing = [...paths].filter((p) =>
    !new RegExp(p.replace(/[{}]/g, "\\$&") + "(?![\\w/{])").test(text)
  );
  assert.deepEqual(missing, [], "endpoints missing from docs/operations.md");
});

// ---------------------------------------------------------------- every page

Deno.test("docs: every relative link points to a file, and every anchor to a heading", () => {
  const broken: string[] = [];
  for (const page of ALL_PAGES) {
    const text = read(page);
    const base = new URL(page, ROOT);
    for (const m of prose(text).replace(/`[^`\n]*`/g, "").matchAll(/\]\(([^)\s]+)\)/g)) {
      const target = m[1];
      if (/^[a-z]+:/i.test(target)) continue; // https:, mailto:
      const [file, anchor] = target.split("#");
      const url = file ? new URL(file, base) : base;
      let linked: string | undefined;
      try {
        const info = Deno.statSync(url);
        if (info.isFile && url.pathname.endsWith(".md")) linked = Deno.readTextFileSync(url);
      } catch {
        broken.push(`${page}: ${target}: no such file`);
        continue;
      }
      if (anchor !== undefined && linked !== undefined && !anchors(linked).has(anchor)) {
        broken.push(`${page}: ${target}: no such heading`);
      }
    }
  }
  assert.deepEqual(broken, []);
});

Deno.test("docs: every page starts with a table of contents that lists each of its sections", () => {
  for (const page of PAGES) {
    const text = prose(read(page));
    const lines = text.split("\n");
    const firstSection = lines.findIndex((l) => l.startsWith("## "));
    assert.ok(firstSection > 0, `${page}: no sections`);
    const top = lines.slice(0, firstSection).join("\n");
    const listed = new Set([...top.matchAll(/^\s*- \[[^\]]+\]\(#([^)]+)\)/gm)].map((m) => m[1]));
    const sections = lines.filter((l) => l.startsWith("## ")).map((l) => slug(l.slice(3)));
    const missing = sections.filter((s) => !listed.has(s));
    assert.deepEqual(missing, [], `${page}: sections missing from its table of contents`);
  }
});

Deno.test("docs: the anchor rule matches GitHub's for headings with code and punctuation", () => {
  assert.equal(slug("Why the listener is not `Deno.serve`"), "why-the-listener-is-not-denoserve");
  assert.equal(
    slug("Front ends: HTTP/1.1, TLS, HTTP/2, tunnels"),
    "front-ends-http11-tls-http2-tunnels",
  );
  assert.equal(slug("State: one owner, shared counters"), "state-one-owner-shared-counters");
});
