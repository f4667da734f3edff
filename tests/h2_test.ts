/**
 * lib/listener/h2.ts: HTTP/2 over TLS (ALPN h2) and h2c prior knowledge on a plain port shared
 * with HTTP/1.1, served by Deno's hyper per connection, checked with curl, nghttp and h2load.
 */
import assert from "node:assert/strict";
import {
  detectPreface,
  H2_PREFACE,
  type H2Handler,
  type H2Reply,
  type H2Request,
  type H2Session,
  openH2cBridge,
  serveHttp2,
  toResponse,
} from "../lib/listener/h2.ts";
import { createTestCa, type TestCa, type TestCert } from "./tls_helpers.ts";
import { need } from "./process_helpers.ts";

const missing = (await need("h2load", "nghttp2-client")) ??
  (await need("nghttp", "nghttp2-client")) ??
  (await need("curl", "curl"));
if (missing) console.warn(`skipping HTTP/2 tests: ${missing}`);

let ca: TestCa;
let leaf: TestCert;
const setup = (async () => {
  ca = await createTestCa();
  leaf = await ca.issue("h2", { sans: ["h2.test"] });
})();

async function run(
  command: string,
  args: string[],
): Promise<{ code: number; out: string; err: string }> {
  const o = await new Deno.Command(command, { args, stdout: "piped", stderr: "piped" }).output();
  return {
    code: o.code,
    out: new TextDecoder().decode(o.stdout),
    err: new TextDecoder().decode(o.stderr),
  };
}

/** A TLS port offering h2 and http/1.1: h2 connections go to `serveHttp2`, others get a fixed HTTP/1.1 answer. */
function tlsServer(handler: H2Handler, errors: unknown[] = []) {
  const listener = Deno.listenTls({
    hostname: "127.0.0.1",
    port: 0,
    alpnProtocols: ["h2", "http/1.1"],
    cert: leaf.cert,
    key: leaf.key,
  });
  const sessions: H2Session[] = [];
  const loop = (async () => {
    for (;;) {
      let conn: Deno.TlsConn;
      try {
        conn = await listener.accept();
      } catch {
        return;
      }
      (async () => {
        const { alpnProtocol } = await conn.handshake();
        if (alpnProtocol === "h2") {
          sessions.push(serveHttp2(conn, { handler, onError: (e) => errors.push(e) }));
          return;
        }
        await answerHttp1(conn);
      })().catch(() => {});
    }
  })();
  return {
    port: (listener.addr as Deno.NetAddr).port,
    sessions,
    async close() {
      listener.close();
      await loop;
      for (const s of sessions) s.close();
      await Promise.all(sessions.map((s) => s.finished));
    },
  };
}

const H1_REPLY = new TextEncoder().encode("HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nhttp1\n");

/** Stands in for sluice's HTTP/1.1 server: a fixed answer per request head. */
async function answerHttp1(conn: Deno.Conn, first?: Uint8Array): Promise<void> {
  const buf = new Uint8Array(8192);
  let text = first ? new TextDecoder().decode(first) : "";
  try {
    for (;;) {
      while (text.includes("\r\n\r\n")) {
        text = text.slice(text.indexOf("\r\n\r\n") + 4);
        await conn.write(H1_REPLY);
      }
      const n = await conn.read(buf);
      if (n === null) break;
      text += new TextDecoder().decode(buf.subarray(0, n));
    }
  } finally {
    try {
      conn.close();
    } catch { /* closed */ }
  }
}

const text = (status: number, body: string, headers: [string, string][] = []): H2Reply => ({
  status,
  headers: [["content-type", "text/plain"], ...headers],
  body: new TextEncoder().encode(body),
});

async function sha256(stream: ReadableStream<Uint8Array> | null): Promise<string> {
  const bytes = await new Response(stream).arrayBuffer();
  return [...new Uint8Array(await crypto.subtle.digest("SHA-256", bytes))]
    .map((b) => b.toString(16).padStart(2, "0")).join("");
}

const curlTls = (port: number) => ["--cacert", ca.caFile, "--resolve", `h2.test:${port}:127.0.0.1`];

Deno.test({
  name: "h2: 100 concurrent streams on one TLS connection are all answered, concurrently",
  ignore: missing !== undefined,
  async fn() {
    await setup;
    let inflight = 0;
    let most = 0;
    const server = tlsServer(async () => {
      most = Math.max(most, ++inflight);
      await new Promise((r) => setTimeout(r, 20));
      inflight--;
      return text(200, "ok\n");
    });
    try {
      const r = await run("h2load", [
        "-n1000",
        "-c1",
        "-m100",
        `https://127.0.0.1:${server.port}/`,
      ]);
      assert.match(r.out, /Application protocol: h2/);
      assert.match(
        r.out,
        /requests: 1000 total, 1000 started, 1000 done, 1000 succeeded, 0 failed/,
        r.out,
      );
      assert.match(r.out, /status codes: 1000 2xx/);
      assert.ok(most >= 50, `only ${most} streams were in the handler at once`);
      assert.equal(server.sessions.length, 1, "one connection");
    } finally {
      await server.close();
    }
  },
});

Deno.test({
  name:
    "h2: the request as the proxy sees it — raw target, :authority, lower-case names, joined cookies, client address",
  ignore: missing !== undefined,
  async fn() {
    await setup;
    const seen: H2Request[] = [];
    const server = tlsServer((req) => {
      seen.push(req);
      return Promise.resolve(text(200, "ok\n"));
    });
    try {
      const r = await run("curl", [
        "-s",
        ...curlTls(server.port),
        "--http2",
        "--path-as-is",
        "-H",
        "Cookie: a=1",
        "-H",
        "cookie: b=2",
        "-H",
        "X-Custom: v",
        "-o",
        "/dev/null",
        "-w",
        "%{http_version} %{local_port}",
        `https://h2.test:${server.port}/a/../b/%7e?x=%20y&z=1`,
      ]);
      const [version, localPort] = r.out.split(" ");
      assert.equal(version, "2");
      const req = seen[0];
      assert.equal(req.protocol, "HTTP/2");
      assert.equal(req.method, "GET");
      assert.equal(req.target, "/a/../b/%7e?x=%20y&z=1");
      assert.equal(req.host, `h2.test:${server.port}`);
      assert.equal(req.header("cookie"), "a=1; b=2");
      assert.equal(req.header("x-custom"), "v");
      assert.ok(req.keys.every((k) => k === k.toLowerCase()));
      assert.ok(!req.keys.includes("host"));
      assert.equal(req.ip, "127.0.0.1");
      assert.equal(req.port, Number(localPort));
      assert.equal(req.body, null);
      assert.equal(req.length, -1);
      assert.equal(req.chunked, false);
    } finally {
      await server.close();
    }
  },
});

Deno.test({
  name:
    "h2: a 5 MB request body streams to the handler byte-exact, with and without content-length",
  ignore: missing !== undefined,
  async fn() {
    await setup;
    const file = await Deno.makeTempFile();
    const data = new Uint8Array(5_000_000);
    for (let i = 0; i < data.length; i += 65536) {
      crypto.getRandomValues(data.subarray(i, i + 65536));
    }
    await Deno.writeFile(file, data);
    const expected = await sha256(new Blob([data]).stream());
    const server = tlsServer(async (req) => {
      const hash = await sha256(req.body);
      return text(200, `${hash} ${req.length} ${req.chunked}`);
    });
    try {
      const base = ["-s", ...curlTls(server.port), "--http2", `https://h2.test:${server.port}/up`];
      const sized = await run("curl", [...base, "--data-binary", `@${file}`]);
      assert.equal(sized.out, `${expected} 5000000 false`);
      const unsized = await run("curl", [...base, "-T", file, "-H", "transfer-encoding: chunked"]);
      assert.equal(unsized.out, `${expected} -1 true`);
    } finally {
      await server.close();
      await Deno.remove(file);
    }
  },
});

Deno.test({
  name: "h2: replies drop connection-specific headers; HEAD keeps content-length; 204 has no body",
  ignore: missing !== undefined,
  async fn() {
    await setup;
    const server = tlsServer((req) => {
      if (req.target === "/204") return Promise.resolve({ status: 204, headers: [], body: null });
      const body = new ReadableStream<Uint8Array>({
        start(c) {
          c.enqueue(new TextEncoder().encode("streamed "));
          c.enqueue(new TextEncoder().encode("body\n"));
          c.close();
        },
      });
      return Promise.resolve({
        status: 201,
        headers: [
          ["Connection", "keep-alive, X-Hop"],
          ["Keep-Alive", "timeout=5"],
          ["Transfer-Encoding", "chunked"],
          ["Upgrade", "h2c"],
          ["X-Hop", "dropped"],
          ["X-Kept", "yes"],
          ["Set-Cookie", "a=1"],
          ["Set-Cookie", "b=2"],
        ],
        length: 14,
        body,
      });
    });
    try {
      const get = await run("curl", [
        "-si",
        ...curlTls(server.port),
        "--http2",
        `https://h2.test:${server.port}/`,
      ]);
      assert.match(get.out, /^HTTP\/2 201/);
      assert.match(get.out, /x-kept: yes/);
      assert.match(get.out, /content-length: 14/);
      assert.match(get.out, /set-cookie: a=1\r\nset-cookie: b=2/);
      assert.doesNotMatch(get.out, /connection:|keep-alive:|transfer-encoding:|upgrade:|x-hop:/i);
      assert.match(get.out, /streamed body\n$/);
      const head = await run("curl", [
        "-sI",
        ...curlTls(server.port),
        "--http2",
        `https://h2.test:${server.port}/`,
      ]);
      assert.match(head.out, /content-length: 14/);
      const none = await run("curl", [
        "-si",
        ...curlTls(server.port),
        "--http2",
        `https://h2.test:${server.port}/204`,
      ]);
      assert.match(none.out, /^HTTP\/2 204/);
    } finally {
      await server.close();
    }
  },
});

Deno.test({
  name: "h2: a handler that throws gets its stream a 500; other streams and the connection go on",
  ignore: missing !== undefined,
  async fn() {
    await setup;
    const errors: unknown[] = [];
    const server = tlsServer((req) => {
      if (req.target === "/boom") throw new Error("boom");
      return Promise.resolve(text(200, "fine\n"));
    }, errors);
    try {
      const r = await run("nghttp", [
        "-n",
        "-s",
        `https://127.0.0.1:${server.port}/boom`,
        `https://127.0.0.1:${server.port}/ok`,
      ]);
      assert.equal(r.code, 0, r.err);
      const statuses = await run("nghttp", [
        "-v",
        "-n",
        `https://127.0.0.1:${server.port}/boom`,
        `https://127.0.0.1:${server.port}/ok`,
      ]);
      assert.match(statuses.out, /:status: 500/);
      assert.match(statuses.out, /:status: 200/);
      assert.equal(server.sessions.length, 2, "one connection per nghttp run");
      assert.ok(errors.some((e) => e instanceof Error && e.message === "boom"));
    } finally {
      await server.close();
    }
  },
});

Deno.test({
  name: "h2: shutdown lets an in-flight stream finish, then the connection ends",
  ignore: missing !== undefined,
  async fn() {
    await setup;
    let release!: () => void;
    const gate = new Promise<void>((r) => release = r);
    let entered!: () => void;
    const inHandler = new Promise<void>((r) => entered = r);
    const server = tlsServer(async () => {
      entered();
      await gate;
      return text(200, "late but whole\n");
    });
    try {
      const client = run("curl", [
        "-s",
        ...curlTls(server.port),
        "--http2",
        `https://h2.test:${server.port}/slow`,
      ]);
      await inHandler;
      const shutdown = server.sessions[0].shutdown();
      release();
      await shutdown;
      assert.equal((await client).out, "late but whole\n");
    } finally {
      await server.close();
    }
  },
});

Deno.test({
  name: "h2: close() resets a stream that never ends and the session finishes",
  ignore: missing !== undefined,
  async fn() {
    await setup;
    let entered!: () => void;
    const inHandler = new Promise<void>((r) => entered = r);
    const server = tlsServer(() => {
      entered();
      return new Promise<H2Reply>(() => {}); // a backend that never answers
    });
    try {
      const client = run("curl", [
        "-s",
        ...curlTls(server.port),
        "--http2",
        `https://h2.test:${server.port}/hang`,
      ]);
      await inHandler;
      server.sessions[0].close();
      await server.sessions[0].finished;
      assert.notEqual((await client).code, 0, "curl saw the connection go");
    } finally {
      await server.close();
    }
  },
});

Deno.test({
  name:
    "h2c: prior knowledge and HTTP/1.1 share a plain port; h2c goes through the bridge with the real client address",
  ignore: missing !== undefined,
  async fn() {
    const seen: H2Request[] = [];
    const bridge = openH2cBridge({
      handler: async (req) => {
        seen.push(req);
        const body = req.body ? await sha256(req.body) : "none";
        return text(200, `h2c ${req.ip}:${req.port} ${body}\n`);
      },
      onError: () => {},
    });
    const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const port = (listener.addr as Deno.NetAddr).port;
    const sessions: H2Session[] = [];
    const loop = (async () => {
      for (;;) {
        let conn: Deno.Conn;
        try {
          conn = await listener.accept();
        } catch {
          return;
        }
        (async () => {
          // What the plain listener's reader does: look at the bytes it already has.
          const buf = new Uint8Array(8192);
          let end = 0;
          for (;;) {
            const n = await conn.read(buf.subarray(end));
            if (n === null) return conn.close();
            end += n;
            const verdict = detectPreface(buf, 0, end);
            if (verdict === "h2") return sessions.push(bridge.serve(conn, buf.slice(0, end)));
            if (verdict === "http1") return answerHttp1(conn, buf.slice(0, end));
          }
        })().catch(() => {});
      }
    })();
    try {
      const h2 = await run("curl", [
        "-s",
        "--http2-prior-knowledge",
        "-w",
        " %{http_version} %{local_port}",
        `http://127.0.0.1:${port}/x`,
      ]);
      const [body, version, localPort] = h2.out.trim().split(/\s+(?=\S+ \S+$)|\s(?=\S+$)/);
      assert.equal(version, "2");
      assert.equal(body.trim(), `h2c 127.0.0.1:${localPort} none`);
      assert.equal(seen[0].host, `127.0.0.1:${port}`);
      const h1 = await run("curl", ["-s", "--http1.1", `http://127.0.0.1:${port}/`]);
      assert.equal(h1.out, "http1\n");
      const load = await run("h2load", ["-n2000", "-c2", "-m50", `http://127.0.0.1:${port}/`]);
      assert.match(load.out, /2000 succeeded, 0 failed/, load.out);
      const upload = new Uint8Array(3_000_000);
      for (let i = 0; i < upload.length; i += 65536) {
        crypto.getRandomValues(upload.subarray(i, i + 65536));
      }
      const file = await Deno.makeTempFile();
      await Deno.writeFile(file, upload);
      const posted = await run("curl", [
        "-s",
        "--http2-prior-knowledge",
        "--data-binary",
        `@${file}`,
        `http://127.0.0.1:${port}/up`,
      ]);
      await Deno.remove(file);
      assert.match(posted.out, new RegExp(` ${await sha256(new Blob([upload]).stream())}\n$`));
    } finally {
      listener.close();
      await loop;
      for (const s of sessions) s.close();
      await Promise.all(sessions.map((s) => s.finished));
      bridge.close();
    }
  },
});

Deno.test("h2: detectPreface tells h2, HTTP/1.1 and not-yet from partial bytes", () => {
  const get = new TextEncoder().encode("GET / HTTP/1.1\r\n");
  assert.equal(detectPreface(H2_PREFACE, 0, H2_PREFACE.length), "h2");
  assert.equal(detectPreface(H2_PREFACE, 0, 10), "more");
  assert.equal(detectPreface(H2_PREFACE, 0, 0), "more");
  assert.equal(detectPreface(get, 0, get.length), "http1");
  assert.equal(detectPreface(new TextEncoder().encode("PRI * HTTP/1.1\r\n"), 0, 16), "http1");
  const shifted = new Uint8Array(H2_PREFACE.length + 3);
  shifted.set(H2_PREFACE, 3);
  assert.equal(detectPreface(shifted, 3, shifted.length), "h2");
});

Deno.test("h2: toResponse maps a Reply with length and drops headers named by Connection", async () => {
  const r = toResponse({
    status: 200,
    headers: [["Connection", "close, X-Private"], ["x-private", "1"], ["X-Public", "2"]],
    length: 3,
    body: new TextEncoder().encode("abc"),
  }, "GET");
  assert.equal(r.status, 200);
  assert.equal(r.headers.get("content-length"), "3");
  assert.equal(r.headers.get("x-public"), "2");
  assert.equal(r.headers.get("x-private"), null);
  assert.equal(r.headers.get("connection"), null);
  assert.equal(await r.text(), "abc");
  const head = toResponse(
    { status: 200, headers: [], length: 10, body: new Uint8Array(10) },
    "HEAD",
  );
  assert.equal(head.body, null);
  assert.equal(head.headers.get("content-length"), "10");
  // Lent bytes (a view into a backend connection's buffer) are released once the Response is
  // made: the buffer may be overwritten then, and the client must still get the old bytes.
  const buf = new TextEncoder().encode("xxlentxx");
  const lent = toResponse(
    { status: 200, headers: [], length: 4, body: buf.subarray(2, 6), release: () => {} },
    "GET",
  );
  buf.fill(0);
  assert.equal(await lent.text(), "lent");
});

Deno.test("h2: clean up the throwaway CA", async () => {
  await setup;
  await ca.cleanup();
});
