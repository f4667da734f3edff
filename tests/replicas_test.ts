/**
 * Replicas that agree: three sluice processes with the same config and no shared state send
 * each key to the same backend (`strategy: maglev`), before and after a backend is removed by
 * a reload, and their choice is the one an in-process Maglev table predicts.
 */
import assert from "node:assert/strict";
import { type DemoBackend, startBackends } from "./helpers.ts";
import { configDir, sighupReload, type Sluice, startSluice } from "./ops_helpers.ts";
import { MaglevTable } from "../lib/select/maglev.ts";

const KEYS = Array.from({ length: 1_000 }, (_, i) => `key-${i}`);
/** Concurrent keep-alive clients per process. */
const CLIENTS = 16;
const HELLO = /^Hello from backend server on port: (\d+)$/;

function config(backends: DemoBackend[]): Record<string, unknown> {
  return {
    listen: { host: "127.0.0.1", port: 0 },
    strategy: "maglev",
    hashKey: "header:x-key",
    backends: backends.map((b) => ({ url: `http://127.0.0.1:${b.port}` })),
    health: { path: "/health", interval: "1m" },
  };
}

/** Starts `n` sluice processes on `file`; if one cannot start, stops the others and explains. */
async function startReplicas(file: string, n: number): Promise<Sluice[]> {
  const started = await Promise.allSettled(Array.from({ length: n }, () => startSluice(file)));
  const ok = started.flatMap((s) => s.status === "fulfilled" ? [s.value] : []);
  const failed = started.find((s) => s.status === "rejected");
  if (failed) {
    await Promise.all(ok.map((s) => s.stop()));
    const reason = String(failed.reason);
    const hint = /strategy/.test(reason)
      ? "\n(`strategy: maglev` is rejected: lib/config.ts STRATEGIES and lib/select/mod.ts need it)"
      : "";
    throw new Error(`a replica did not start: ${reason}${hint}`);
  }
  return ok;
}

/** The backend port each key reached through `url`, asked by {@linkcode CLIENTS} clients at once. */
async function ownersThrough(url: string): Promise<number[]> {
  const out = new Array<number>(KEYS.length);
  let next = 0;
  const client = async () => {
    while (next < KEYS.length) {
      const i = next++;
      const res = await fetch(url, { headers: { "x-key": KEYS[i] } });
      const body = (await res.text()).trim();
      const match = HELLO.exec(body);
      const hint = res.status === 500 ? " (is `maglev` wired in lib/select/mod.ts?)" : "";
      assert.ok(res.status === 200 && match, `${KEYS[i]}: ${res.status} ${body}${hint}`);
      out[i] = Number(match[1]);
    }
  };
  await Promise.all(Array.from({ length: CLIENTS }, client));
  return out;
}

/**
 * What a Maglev table built here says for each key, over the same backends: an unnamed
 * backend's stable id is its host:port.
 */
function predicted(backends: DemoBackend[]): number[] {
  const table = new MaglevTable(
    backends.map((b) => ({ id: `127.0.0.1:${b.port}`, port: b.port, weight: 1, available: true })),
  );
  return KEYS.map((key) => table.owner(key)!.port);
}

Deno.test("replicas: 3 sluice processes with strategy maglev agree on the backend for 1,000 keys, also after a backend leaves", async () => {
  const backends = await startBackends(10);
  try {
    await using cfg = await configDir(config(backends));
    const replicas = await startReplicas(cfg.file, 3);
    try {
      const seen = await Promise.all(replicas.map((r) => ownersThrough(r.url)));
      assert.deepEqual(seen[1], seen[0], "replica 2 disagrees with replica 1");
      assert.deepEqual(seen[2], seen[0], "replica 3 disagrees with replica 1");
      assert.deepEqual(seen[0], predicted(backends), "the replicas do not use a Maglev table");
      assert.equal(new Set(seen[0]).size, 10, "every backend owns keys");

      // One backend leaves (a reload of each replica): the replicas still agree, and only
      // about a tenth of the keys move, nearly all of them the leaver's.
      const gone = backends[4];
      const rest = backends.filter((b) => b !== gone);
      await cfg.write(config(rest));
      await Promise.all(replicas.map((r) => sighupReload(r)));
      const after = await Promise.all(replicas.map((r) => ownersThrough(r.url)));
      assert.deepEqual(after[1], after[0], "after the reload, replica 2 disagrees with replica 1");
      assert.deepEqual(after[2], after[0], "after the reload, replica 3 disagrees with replica 1");
      assert.deepEqual(after[0], predicted(rest));
      assert.ok(!after[0].includes(gone.port));
      const moved = KEYS.filter((_, i) => after[0][i] !== seen[0][i]).length;
      assert.ok(moved >= 60 && moved <= 140, `${moved} of 1,000 keys moved`);
      const othersMoved = KEYS.filter((_, i) =>
        seen[0][i] !== gone.port && after[0][i] !== seen[0][i]
      ).length;
      assert.ok(othersMoved <= 20, `${othersMoved} keys of remaining backends moved`);
    } finally {
      await Promise.all(replicas.map((r) => r.stop()));
    }
  } finally {
    await Promise.all(backends.map((b) => b.shutdown()));
  }
});
