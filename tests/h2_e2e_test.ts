/**
 * HTTP/2 to clients through main.ts with real clients (h2load, nghttp, curl, openssl
 * s_client): h2 by ALPN next to HTTP/1.1 on a TLS listener, h2c prior knowledge next to
 * HTTP/1.1 on a plain one, 100 concurrent streams on one connection spread over the backends,
 * request bodies streamed byte-exact, `HTTP/2` in the access log and metrics, and idle h2
 * connections closed after `timeouts.clientIdle`.
 */
import assert from "node:assert/strict";
import { type LaunchedSluice, launchSluice, PATIENCE, startTestBackends } from "./ops_helpers.ts";
import { createTestCa, sClient, type TestCa, type TestCert } from "./tls_helpers.ts";

const TOKEN = "h2-e2e-test-token-0123456789";
let ca: TestCa;
let cert: TestCert;
const setup = (async () => {
  ca = await createTestCa();
  cert = await ca.issue("site", { sans: ["site.example.com", "localhost", "IP:127.0.0.1"] });
})();

/** sluice (with `--allow-ffi`, a JSON access log on stdout and an admin port) from `config`. */
function launch(config: Record<string, unknown>): Promise<LaunchedSluice> {
  return launchSluice({
    accessLog: { format: "json" },
    admin: { host: "127.0.0.1", port: 0, token: TOKEN },
    health: { path: "/health" },
    ...config,
  }, { ffi: true, settle: false });
}

const tls = () => ({ certificates: [{ cert: cert.certFile, key: cert.keyFile }] });

/** Runs a command; its exit code and output. `input` is written to its stdin. */
async function run(cmd: string, args: string[], input?: Uint8Array) {
  const child = new Deno.Command(cmd, {
    args,
    stdin: input ? "piped" : "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  if (input) {
    const writer = child.stdin.getWriter();
    // In pieces, so the client streams it (no length known up front).
    for (let i = 0; i < input.length; i += 256 * 1024) {
      await writer.write(input.subarray(i, i + 256 * 1024));
    }
    await writer.close();
  }
  const out = await child.output();
  const text = new TextDecoder();
  return { code: out.code, stdout: text.decode(out.stdout), stderr: text.decode(out.stderr) };
}

/** Sum of the samples of one metric whose line matches `line`. */
async function metricSum(s: LaunchedSluice, line: RegExp): Promise<number> {
  const res = await fetch(`${s.admin}/metrics`, {
    headers: { authorization: `Bearer ${TOKEN}` },
  });
  return (await res.text()).split("\n").filter((l) => line.test(l))
    .reduce((n, l) => n + Number(l.split(" ").pop()), 0);
}

Deno.test("h2: 100 concurrent streams on one TLS connection are all answered, spread over the backends; HTTP/2 logged and counted", async () => {
  await setup;
  await using backends = await startTestBackends("b1", "b2", "b3");
  await using s = await launch({
    listen: [{ host: "127.0.0.1", port: 0, tls: tls() }],
    backends: backends.map((b) => ({ url: b.url })),
  });
  const started = performance.now();
  // One connection, 100 streams at once; each backend answer takes 100 ms.
  const out = await run("h2load", [
    "-n",
    "100",
    "-c",
    "1",
    "-m",
    "100",
    `https://127.0.0.1:${s.ports[0]}/?delay=100`,
  ]);
  const elapsed = performance.now() - started;
  assert.equal(out.code, 0, out.stdout + out.stderr);
  assert.match(out.stdout, /requests: 100 total, 100 started, 100 done, 100 succeeded/, out.stdout);
  assert.match(out.stdout, /status codes: 100 2xx/);
  assert.match(out.stdout, /Application protocol: h2/);
  // One after another they would take 10 s.
  assert.ok(elapsed < 5_000, `100 streams took ${elapsed.toFixed(0)} ms`);
  for (const b of backends) assert.ok(b.hits >= 20, `${b.name}: ${b.hits} of 100`);
  assert.equal(backends.reduce((n, b) => n + b.hits, 0), 100);

  await s.stdout.waitFor(/"protocol":"HTTP\/2"/, 100, PATIENCE);
  const h2 = s.records().filter((r) => r.protocol === "HTTP/2");
  assert.equal(h2.length, 100);
  assert.ok(h2.every((r) => r.status === 200 && r.target === "/?delay=100"));
  assert.equal(
    await metricSum(s, /^sluice_requests_total\{.*code="200".*protocol="HTTP\/2"\}/),
    100,
  );
});

Deno.test("h2: a TLS listener offers h2 and http/1.1 by ALPN; http2: false offers http/1.1 only", async () => {
  await setup;
  await using backends = await startTestBackends("b1");
  await using s = await launch({
    listen: [
      { host: "127.0.0.1", port: 0, tls: tls() },
      { host: "127.0.0.1", port: 0, tls: tls(), http2: false },
    ],
    backends: [{ url: backends[0].url }],
  });
  const [both, h1only] = s.ports;
  const alpn = async (port: number, offer: string[]) =>
    (await sClient(port, { serverName: "site.example.com", alpn: offer })).alpn;
  assert.equal(await alpn(both, ["h2", "http/1.1"]), "h2");
  assert.equal(await alpn(both, ["http/1.1"]), "http/1.1");
  assert.equal(await alpn(h1only, ["h2", "http/1.1"]), "http/1.1");
  const curl = (port: number, ...extra: string[]) =>
    run("curl", [
      "-sS",
      "--cacert",
      ca.caFile,
      "--resolve",
      `site.example.com:${port}:127.0.0.1`,
      "-w",
      " %{http_version}",
      ...extra,
      `https://site.example.com:${port}/`,
    ]);
  assert.equal((await curl(both, "--http2")).stdout, "b1 2");
  assert.equal((await curl(both, "--http1.1")).stdout, "b1 1.1");
  assert.equal((await curl(h1only, "--http2")).stdout, "b1 1.1");
});

Deno.test("h2c: prior knowledge and HTTP/1.1 share a plain port with http2: true; not without it", async () => {
  await setup;
  await using backends = await startTestBackends("b1");
  await using s = await launch({
    listen: [
      { host: "127.0.0.1", port: 0, http2: true },
      { host: "127.0.0.1", port: 0 },
    ],
    backends: [{ url: backends[0].url }],
  });
  const [h2c, plain] = s.ports;
  const curl = (port: number, path: string, ...extra: string[]) =>
    run("curl", ["-sS", "-w", " %{http_version}", ...extra, `http://127.0.0.1:${port}${path}`]);
  assert.equal((await curl(h2c, "/", "--http2-prior-knowledge")).stdout, "b1 2");
  assert.equal((await curl(h2c, "/")).stdout, "b1 1.1");
  const echo = await curl(h2c, "/echo", "--http2-prior-knowledge");
  const headers = new Map(JSON.parse(echo.stdout.slice(0, -2)).headers as [string, string][]);
  assert.equal(headers.get("x-forwarded-for"), "127.0.0.1", "the real client address");
  assert.equal(headers.get("x-forwarded-proto"), "http");
  assert.equal(headers.get("host"), `127.0.0.1:${h2c}`);
  const nghttp = await run("nghttp", ["-v", `http://127.0.0.1:${h2c}/`]);
  assert.equal(nghttp.code, 0, nghttp.stderr);
  assert.match(nghttp.stdout, /:status: 200/);
  // A plain listener without http2 speaks HTTP/1.x only: the preface is a bad request to it.
  const refused = await curl(plain, "/", "--http2-prior-knowledge");
  assert.notEqual(refused.code, 0);
  await s.stdout.waitFor(/"protocol":"HTTP\/2"/, 3, PATIENCE);
});

Deno.test("h2: a 5 MB request body streamed over h2 and h2c reaches the backend byte-exact", async () => {
  await setup;
  const backend = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, async (req) => {
    if (new URL(req.url).pathname === "/health") return new Response("ok");
    let length = 0;
    const parts: Uint8Array[] = [];
    for await (const chunk of req.body!) {
      parts.push(chunk);
      length += chunk.length;
    }
    const all = new Uint8Array(length);
    let at = 0;
    for (const p of parts) all.set(p, (at += p.length) - p.length);
    const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", all));
    return Response.json({
      length,
      sha256: [...digest].map((b) => b.toString(16).padStart(2, "0")).join(""),
      chunked: req.headers.get("transfer-encoding"),
      contentLength: req.headers.get("content-length"),
    });
  });
  try {
    await using s = await launch({
      listen: [
        { host: "127.0.0.1", port: 0, tls: tls() },
        { host: "127.0.0.1", port: 0, http2: true },
      ],
      backends: [{ url: `http://127.0.0.1:${backend.addr.port}` }],
    });
    const body = new Uint8Array(5_000_000);
    for (let i = 0; i < body.length; i += 65536) {
      crypto.getRandomValues(body.subarray(i, Math.min(i + 65536, body.length)));
    }
    const expected = [...new Uint8Array(await crypto.subtle.digest("SHA-256", body))]
      .map((b) => b.toString(16).padStart(2, "0")).join("");
    const file = await Deno.makeTempFile();
    try {
      await Deno.writeFile(file, body);
      const targets = [
        ["--cacert", ca.caFile, "--http2", `https://127.0.0.1:${s.ports[0]}/upload`],
        ["--http2-prior-knowledge", `http://127.0.0.1:${s.ports[1]}/upload`],
      ];
      for (const target of targets) {
        // With a length (a file), and streamed from stdin without one.
        const sized = await run("curl", ["-sS", "--data-binary", `@${file}`, ...target]);
        const streamed = await run("curl", ["-sS", "-T", "-", "-X", "POST", ...target], body);
        for (const [what, out] of [["sized", sized], ["streamed", streamed]] as const) {
          assert.equal(out.code, 0, out.stderr);
          const seen = JSON.parse(out.stdout);
          assert.equal(seen.length, body.length, `${what} ${target.at(-1)}`);
          assert.equal(seen.sha256, expected, `${what} ${target.at(-1)}`);
        }
        assert.equal(JSON.parse(sized.stdout).contentLength, String(body.length));
        assert.equal(JSON.parse(streamed.stdout).chunked, "chunked", "no length: sent chunked");
      }
    } finally {
      await Deno.remove(file);
    }
  } finally {
    await backend.shutdown();
  }
});

Deno.test("h2: requests meet the HTTP/1.1 limits: 414, 431, 413 for a declared or a streamed body", async () => {
  await setup;
  await using backends = await startTestBackends("b1");
  await using s = await launch({
    listen: [{ host: "127.0.0.1", port: 0, http2: true }],
    backends: [{ url: backends[0].url }],
    limits: { maxUriLength: 100, maxHeaders: 20, maxBodySize: 1000 },
  });
  const url = `http://127.0.0.1:${s.ports[0]}`;
  const curl = (args: string[], input?: Uint8Array) =>
    run("curl", [
      "-sS",
      "--http2-prior-knowledge",
      "-o",
      "/dev/null",
      "-w",
      "%{http_code}",
      ...args,
    ], input);
  assert.equal((await curl([`${url}/ok`])).stdout, "200");
  assert.equal((await curl([`${url}/${"x".repeat(120)}`])).stdout, "414");
  const many = Array.from({ length: 25 }, (_, i) => ["-H", `x-h${i}: ${i}`]).flat();
  assert.equal((await curl([...many, `${url}/`])).stdout, "431");
  // A refused upload is sent with nghttp: curl 7.88 (Debian 12) may drop the 413 when the
  // stream's RST_STREAM(NO_ERROR) follows it before curl has sent its whole body (RFC 9113
  // §8.1 allows that reset; curl reports "Stream error in the HTTP/2 framing layer").
  const big = await Deno.makeTempFile();
  try {
    await Deno.writeFile(big, new Uint8Array(5000));
    const status = async (...args: string[]) => {
      const out = await run("nghttp", ["-v", "-d", big, ...args, `${url}/up`]);
      return out.stdout.match(/:status: (\d+)/)?.[1] ?? out.stdout + out.stderr;
    };
    assert.equal(await status(), "413", "a declared length over maxBodySize");
    assert.equal(await status("--no-content-length"), "413", "a streamed body over it");
  } finally {
    await Deno.remove(big);
  }
  assert.equal(
    (await curl(["-T", "-", "-X", "POST", `${url}/up`], new Uint8Array(900))).stdout,
    "200",
  );
});

Deno.test("h2: a connection with no stream is closed after timeouts.clientIdle", async () => {
  await setup;
  await using backends = await startTestBackends("b1");
  await using s = await launch({
    listen: [{ host: "127.0.0.1", port: 0, tls: tls() }],
    backends: [{ url: backends[0].url }],
    timeouts: { clientIdle: "1s" },
  });
  // s_client negotiates h2 and then sends nothing: the server's GOAWAY and close end it.
  const child = new Deno.Command("openssl", {
    args: ["s_client", "-connect", `127.0.0.1:${s.ports[0]}`, "-alpn", "h2", "-quiet"],
    stdin: "piped",
    stdout: "null",
    stderr: "null",
  }).spawn();
  const started = performance.now();
  const timer = setTimeout(() => child.kill("SIGKILL"), 20_000);
  try {
    const status = await child.status;
    const after = performance.now() - started;
    assert.notEqual(status.signal, "SIGKILL", "still open after 20 s");
    assert.ok(after >= 900, `closed after ${after.toFixed(0)} ms`);
  } finally {
    clearTimeout(timer);
    await child.stdin.close().catch(() => {});
  }
});

Deno.test("h2 e2e: clean up the throwaway CA", async () => {
  await setup;
  await ca.cleanup();
});
