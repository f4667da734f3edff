/**
 * The rough edges a first-time user hit, and the request limits that protect backends: each
 * as the user meets it, through `main.ts` and real sockets.
 */
import assert from "node:assert/strict";
import { concat, rawExchange, waitFor, withFile } from "./helpers.ts";
import { mainArgs, runDeno } from "./process_helpers.ts";
import { type LaunchedSluice, launchSluice, PATIENCE } from "./ops_helpers.ts";
import { startTestBackends, stopAll } from "./resilience_helpers.ts";
import { sha256 } from "./proxy_helpers.ts";

const sluice = (...args: string[]) => runDeno([...mainArgs(), ...args]);

/** sluice on one plain listener with `requestBuffering: size` in front of `url`. */
function bufferingSluice(size: string, url: string): Promise<LaunchedSluice> {
  return launchSluice({
    listen: { host: "127.0.0.1", port: 0 },
    requestBuffering: size,
    health: { interval: "1h" },
    backends: [{ url }],
  });
}

Deno.test("a listen port in use names the address; the admin port too", async () => {
  using taken = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = taken.addr.port;
  const traffic = await sluice(
    "--host",
    "127.0.0.1",
    "--port",
    String(port),
    "--backend",
    "http://127.0.0.1:9",
  );
  assert.equal(traffic.code, 1);
  assert.match(
    traffic.stderr,
    new RegExp(`cannot start: cannot listen on 127\\.0\\.0\\.1:${port}: address already in use`),
  );
  const config = `listen: { host: 127.0.0.1, port: 0 }\nbackends: [{ url: http://127.0.0.1:9 }]\n` +
    `admin: { host: 127.0.0.1, port: ${port} }\n`;
  await withFile("admin.yaml", config, async (path) => {
    const admin = await sluice("-c", path);
    assert.equal(admin.code, 1);
    assert.match(
      admin.stderr,
      new RegExp(
        `cannot start the admin listener: cannot listen on 127\\.0\\.0\\.1:${port}: ` +
          `address already in use`,
      ),
    );
  });
});

Deno.test("a config file sluice may not read is said to be unreadable, not invalid", async () => {
  await withFile("sluice.yaml", "backends: [{ url: http://127.0.0.1:9 }]\n", async (path) => {
    // No --allow-read: Deno refuses the read.
    const r = await runDeno(["run", "--allow-net", "main.ts", "--check", "-c", path]);
    assert.equal(r.code, 1);
    assert.doesNotMatch(r.stderr, /invalid configuration/);
    assert.match(r.stderr, /cannot read the configuration file:\n.*sluice\.yaml: cannot read: /);
    assert.match(r.stderr, /--allow-read/);
  });
});

Deno.test("--check prints the admin token redacted", async () => {
  const token = "a-secret-token-0123456789";
  const config = `backends: [{ url: http://127.0.0.1:9 }]\nadmin: { token: ${token} }\n`;
  await withFile("sluice.yaml", config, async (path) => {
    const r = await sluice("--check", "-c", path);
    assert.equal(r.code, 0, r.stderr);
    assert.ok(!r.stdout.includes(token), "the token is not printed");
    assert.equal(JSON.parse(r.stdout).admin.token, "(redacted)");
  });
});

Deno.test("zero or tiny intervals are refused with the minimum; admin.port on the traffic port is reported with the rest", async () => {
  const config = [
    "listen: { port: 8080 }",
    "backends: [{ url: http://127.0.0.1:9 }]",
    "health: { interval: 0 }",
    "outlier: { baseEjection: 0s }",
    "timeouts: { connect: 0 }",
    "discovery: { interval: 10ms }",
    "stratgy: round-robin",
    "admin: { port: 8080 }",
  ].join("\n");
  await withFile("sluice.yaml", config, async (path) => {
    const r = await sluice("--check", "-c", path);
    assert.equal(r.code, 1);
    const lines = r.stderr.trim().split("\n").slice(1).sort();
    assert.deepEqual(lines, [
      "admin.port: must differ from listen.port (8080)",
      'discovery.interval: must be at least 1s (got "10ms")',
      "health.interval: must be at least 100ms (got 0)",
      'outlier.baseEjection: must be at least 1ms (got "0s")',
      "stratgy: unknown key (did you mean strategy?)",
      "timeouts.connect: must be at least 1ms (got 0)",
    ]);
  });
});

Deno.test("backends added through the admin API stay across a reload; a second URL in a pool is refused", async () => {
  const [a, b] = await startTestBackends(["a", "b"]);
  const token = "an-admin-token-0123456789";
  try {
    const config = (extra: Record<string, unknown> = {}) => ({
      listen: { host: "127.0.0.1", port: 0 },
      admin: { host: "127.0.0.1", port: 0, token },
      backends: [{ url: a.url, name: "a" }],
      ...extra,
    });
    await using s = await launchSluice(config());
    const admin = s.admin!;
    const headers = { authorization: `Bearer ${token}`, "content-type": "application/json" };
    const add = await fetch(`${admin}/api/backends`, {
      method: "POST",
      headers,
      body: JSON.stringify({ url: b.url, name: "b" }),
    });
    assert.equal(add.status, 201, await add.text());
    const twin = await fetch(`${admin}/api/backends`, {
      method: "POST",
      headers,
      body: JSON.stringify({ url: b.url, name: "b2" }),
    });
    assert.equal(twin.status, 409);
    assert.match((await twin.json()).error, /already has the URL/);
    // A reload for an unrelated reason keeps the backend the API added.
    await s.config.write(config({ retries: 1 }));
    s.kill("SIGHUP");
    await s.stderr.waitFor(/configuration reloaded/);
    const ids = (await (await fetch(`${admin}/api/status`)).json()).backends.map((
      x: { id: string },
    ) => x.id);
    assert.deepEqual(ids, ["a", "b"]);
    // The same URL twice in the file is refused.
    await s.config.write(config({
      backends: [{ url: a.url, name: "a" }, { url: a.url, name: "a2" }],
    }));
    s.kill("SIGHUP");
    await s.stderr.waitFor(/invalid configuration: backends\[1\]\.url: duplicates backends\[0\]/);
  } finally {
    await stopAll([a, b]);
  }
});

/** A raw connection that sends `head`, then the body bytes in `pieces` as the test says. */
async function connect(port: number) {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  const encoder = new TextEncoder();
  return {
    conn,
    send: (text: string) => conn.write(encoder.encode(text)),
    async answer(): Promise<string> {
      const chunks: Uint8Array[] = [];
      const buf = new Uint8Array(16 * 1024);
      for (;;) {
        const n = await conn.read(buf).catch(() => null);
        if (n === null) break;
        chunks.push(buf.slice(0, n));
        const text = new TextDecoder().decode(concat(chunks));
        if (/\r\n\r\n/.test(text)) return text;
      }
      return new TextDecoder().decode(concat(chunks));
    },
    [Symbol.dispose]() {
      try {
        conn.close();
      } catch { /* closed */ }
    },
  };
}

Deno.test("limits.maxBodySize: a larger Content-Length gets 413 at once; a chunked body that grows past it gets 413 and the backend's request is cut off", async () => {
  const [backend] = await startTestBackends(["b"]);
  try {
    await using s = await launchSluice({
      listen: { host: "127.0.0.1", port: 0 },
      limits: { maxBodySize: "1KB" },
      health: { path: "/health" },
      backends: [{ url: backend.url }],
    });
    const declared = await rawExchange(
      s.port,
      "POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n",
    );
    assert.match(declared, /^HTTP\/1\.1 413 /);
    assert.deepEqual(backend.seen, [], "nothing reached the backend");

    using client = await connect(s.port);
    await client.send("POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n");
    for (let i = 0; i < 3; i++) await client.send(`200\r\n${"x".repeat(512)}\r\n`);
    const answer = await client.answer();
    assert.match(answer, /^HTTP\/1\.1 413 /);
    assert.match(answer, /connection: close/i);
    // Within the limit, bodies pass.
    const small = await rawExchange(
      s.port,
      "POST /ok HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    );
    assert.match(small, /^HTTP\/1\.1 200 /);
    assert.match(small, /b hello$/);
  } finally {
    await stopAll([backend]);
  }
});

/**
 * A backend that counts the connections it accepts, notes each request line as soon as its head
 * arrives, and answers each whole request with 200.
 */
function countingBackend() {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  let connections = 0;
  let requests = 0;
  const requestLines: string[] = [];
  (async () => {
    for await (const conn of listener) {
      connections++;
      (async () => {
        const buf = new Uint8Array(64 * 1024);
        let text = "";
        let noted = false;
        try {
          for (;;) {
            const n = await conn.read(buf);
            if (n === null) break;
            text += new TextDecoder().decode(buf.subarray(0, n));
            const end = text.indexOf("\r\n\r\n");
            if (end === -1) continue;
            if (!noted) requestLines.push(text.slice(0, text.indexOf("\r\n")));
            noted = true;
            const length = Number(/content-length: (\d+)/i.exec(text.slice(0, end))?.[1] ?? 0);
            if (text.length - end - 4 < length) continue;
            text = text.slice(end + 4 + length);
            noted = false;
            requests++;
            await conn.write(
              new TextEncoder().encode("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
            );
          }
        } catch { /* closed */ }
        try {
          conn.close();
        } catch { /* closed */ }
      })();
    }
  })().catch(() => {});
  return {
    url: `http://127.0.0.1:${(listener.addr as Deno.NetAddr).port}`,
    get connections() {
      return connections;
    },
    get requests() {
      return requests;
    },
    /** The request lines whose heads have arrived, in order. */
    requestLines,
    close: () => listener.close(),
  };
}

Deno.test("requestBuffering: slow uploads are read whole before a backend is chosen, so they hold no backend connection", async () => {
  const backend = countingBackend();
  try {
    await using s = await bufferingSluice("64KB", backend.url);
    const before = backend.connections;
    // Twenty clients each send half of a 2 KB body, then stall.
    const clients = await Promise.all(Array.from({ length: 20 }, () => connect(s.port)));
    for (const c of clients) {
      await c.send(
        "POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 2048\r\n\r\n" + "y".repeat(1024),
      );
    }
    // Give the balancer time to do the wrong thing, then check it did not.
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(backend.connections, before, "no backend connection for a body still arriving");
    for (const c of clients) await c.send("y".repeat(1024));
    const answers = await Promise.all(clients.map((c) => c.answer()));
    for (const a of answers) assert.match(a, /^HTTP\/1\.1 200 /);
    await waitFor(
      () => backend.requests >= 20,
      `every upload delivered (${backend.requests})`,
      PATIENCE,
    );
    for (const c of clients) c[Symbol.dispose]();
  } finally {
    backend.close();
  }
});

Deno.test("requestBuffering: a body larger than the buffer streams through whole, sized or chunked", async () => {
  const backend = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, async (req) => {
    const body = new Uint8Array(await req.arrayBuffer());
    return new Response(`${body.length} ${sha256(body)}`);
  });
  try {
    await using s = await bufferingSluice("16KB", `http://127.0.0.1:${backend.addr.port}`);
    const body = new Uint8Array(300 * 1024).map((_, i) => (i * 7) & 0xff);
    const sized = await fetch(`${s.url}/up`, { method: "POST", body });
    assert.equal(await sized.text(), `${body.length} ${sha256(body)}`);
    const chunked = await fetch(`${s.url}/up`, {
      method: "POST",
      body: new Blob([body]).stream(), // no length: sent chunked
    });
    assert.equal(await chunked.text(), `${body.length} ${sha256(body)}`);
  } finally {
    await backend.shutdown();
  }
});

Deno.test("requestBuffering against slowhttptest's slow-body mode: the backend sees none of the slow clients", async () => {
  const tool = await new Deno.Command("sh", { args: ["-c", "command -v slowhttptest"] }).output();
  if (!tool.success) {
    console.log("slowhttptest not installed (Debian package slowhttptest): skipped");
    return;
  }
  const backend = countingBackend();
  try {
    await using s = await bufferingSluice("64KB", backend.url);
    // 40 connections sending a 4 KB POST body 16 bytes every second, for 4 seconds.
    const out = await new Deno.Command("slowhttptest", {
      args: [
        "-B",
        "-c",
        "40",
        "-r",
        "40",
        "-i",
        "1",
        "-s",
        "4096",
        "-x",
        "16",
        "-l",
        "4",
        "-t",
        "POST",
        "-u",
        `${s.url}/slow`,
        "-p",
        "3",
      ],
      stdout: "piped",
      stderr: "piped",
    }).output();
    const report = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
    assert.match(report, /slow HTTP test|connections/i, report);
    // slowhttptest's own probe requests (GET, whole) may pass; no slow POST may.
    const posts = backend.requestLines.filter((line) => line.startsWith("POST"));
    assert.deepEqual(posts, [], "the slow uploads never reached a backend");
    // Normal traffic is still served meanwhile.
    const res = await fetch(`${s.url}/fast`, { method: "POST", body: "hi" });
    assert.equal(res.status, 200);
    await res.body?.cancel();
  } finally {
    backend.close();
  }
});
