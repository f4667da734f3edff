/**
 * WebSocket and any other `Upgrade` through main.ts: a real WebSocket echo server and client
 * (python3-websockets, tests/ws_peer.py) for 10,000 messages byte-exact with
 * permessage-deflate and a subprotocol, close codes, wss through an HTTP/2 TLS listener; and a
 * made-up protocol over raw sockets for early bytes, half-close, non-101 answers, the tunnel
 * idle timeout, drain at shutdown and retries. Plus the server's tunnel count, in-process.
 */
import assert from "node:assert/strict";
import { serve } from "../lib/listener/server.ts";
import { exchange } from "../lib/upstream/client.ts";
import { ConnectionPool } from "../lib/upstream/connection_pool.ts";
import { concat, rawServer } from "./helpers.ts";
import { type LaunchedSluice, launchSluice, PATIENCE } from "./ops_helpers.ts";
import { RawClient } from "./proxy_helpers.ts";
import { createTestCa } from "./tls_helpers.ts";
import { runWsClient, startWsEchoServer, wsUnavailable } from "./ws_helpers.ts";

const unavailable = await wsUnavailable();
if (unavailable) console.warn(`WebSocket tests skipped: ${unavailable}`);
const TOKEN = "websocket-test-token-0123456789";
const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** sluice from a config in a temp dir (with `--allow-ffi`, a JSON access log and an admin port). */
function launch(config: Record<string, unknown>): Promise<LaunchedSluice> {
  return launchSluice({
    accessLog: { format: "json" },
    admin: { host: "127.0.0.1", port: 0, token: TOKEN },
    ...config,
  }, { ffi: true, settle: false });
}

/** Waits for an access log record matching `test`. */
async function record(
  s: LaunchedSluice,
  test: (r: Record<string, unknown>) => boolean,
): Promise<Record<string, unknown>> {
  await s.stdout.waitFor(/^\{/, 1, PATIENCE);
  const deadline = Date.now() + PATIENCE;
  for (;;) {
    const found = s.records().find(test);
    if (found) return found;
    if (Date.now() > deadline) throw new Error(`no access log record; got ${s.records()}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** One metric's value from the admin listener's /metrics. */
async function metric(s: LaunchedSluice, line: RegExp): Promise<number | undefined> {
  const res = await fetch(`${s.admin}/metrics`, {
    headers: { authorization: `Bearer ${TOKEN}` },
  });
  const text = await res.text();
  const found = text.split("\n").find((l) => line.test(l));
  return found === undefined ? undefined : Number(found.split(" ").pop());
}

/**
 * A backend of a made-up protocol, `x-echo/1`: a request with `Connection: upgrade` and
 * `Upgrade: x-echo/1` gets a 101 followed at once by `HELLO\n`; after that every byte comes
 * back upper-cased, and when the client half-closes it answers `BYE\n` and closes. `/refuse`
 * gets a `426` with a body instead, on a connection that stays usable. Health probes get 200.
 */
function xEchoBackend() {
  const heads: string[] = [];
  const serveConn = async (conn: Deno.Conn) => {
    let buf: Uint8Array = new Uint8Array(0);
    const chunk = new Uint8Array(65536);
    const write = async (data: string | Uint8Array) => {
      const bytes = typeof data === "string" ? encoder.encode(data) : data;
      for (let n = 0; n < bytes.length;) n += await conn.write(bytes.subarray(n));
    };
    for (;;) {
      let end: number;
      while ((end = findHeadEnd(buf)) === -1) {
        const n = await conn.read(chunk);
        if (n === null) return;
        buf = concat([buf, chunk.subarray(0, n)]);
      }
      const head = decoder.decode(buf.subarray(0, end));
      buf = buf.slice(end + 4);
      if (/sluice-health-check/i.test(head)) {
        await write("HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
        return;
      }
      heads.push(head);
      if (head.startsWith("GET /refuse ")) {
        await write("HTTP/1.1 426 Upgrade Required\r\nContent-Length: 4\r\n\r\nnope");
        continue;
      }
      if (
        !/\r\nconnection: upgrade(\r\n|$)/i.test(head) ||
        !/\r\nupgrade: x-echo\/1(\r\n|$)/i.test(head)
      ) {
        await write("HTTP/1.1 400 Bad Request\r\nContent-Length: 10\r\n\r\nno upgrade");
        continue;
      }
      await write(
        "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: x-echo/1\r\n" +
          "X-Backend: echo\r\n\r\nHELLO\n",
      );
      // Early bytes the client sent right after its head come first.
      if (buf.length) await write(decoder.decode(buf).toUpperCase());
      for (;;) {
        const n = await conn.read(chunk);
        if (n === null) break;
        await write(decoder.decode(chunk.subarray(0, n)).toUpperCase());
      }
      await write("BYE\n");
      return;
    }
  };
  return { ...rawServer(serveConn), heads };
}

function findHeadEnd(buf: Uint8Array): number {
  for (let i = 0; i + 3 < buf.length; i++) {
    if (buf[i] === 13 && buf[i + 1] === 10 && buf[i + 2] === 13 && buf[i + 3] === 10) return i;
  }
  return -1;
}

/** A client of the made-up protocol over a raw socket. */
class XEchoClient {
  #buf = "";
  #eof = false;
  private constructor(readonly conn: Deno.TcpConn) {}

  /** Connects and sends the upgrade request, with `early` bytes right behind it. */
  static async open(port: number, early = ""): Promise<XEchoClient> {
    const conn = await Deno.connect({ hostname: "127.0.0.1", port });
    const client = new XEchoClient(conn);
    await client.send(
      "GET /tunnel HTTP/1.1\r\nHost: x.example\r\nConnection: Upgrade\r\nUpgrade: x-echo/1\r\n\r\n" +
        early,
    );
    return client;
  }

  async send(text: string): Promise<void> {
    const bytes = encoder.encode(text);
    for (let n = 0; n < bytes.length;) n += await this.conn.write(bytes.subarray(n));
  }

  /** Reads until the received text contains `what`; returns everything up to and including it. */
  async until(what: string): Promise<string> {
    const chunk = new Uint8Array(65536);
    while (!this.#buf.includes(what)) {
      const n = await this.conn.read(chunk).catch(() => null);
      if (n === null) {
        this.#eof = true;
        throw new Error(`closed before ${JSON.stringify(what)}; got ${JSON.stringify(this.#buf)}`);
      }
      this.#buf += decoder.decode(chunk.subarray(0, n));
    }
    const i = this.#buf.indexOf(what) + what.length;
    const out = this.#buf.slice(0, i);
    this.#buf = this.#buf.slice(i);
    return out;
  }

  /** Resolves once the peer closed (EOF or reset), with what arrived meanwhile. */
  async closed(): Promise<string> {
    const chunk = new Uint8Array(65536);
    while (!this.#eof) {
      const n = await this.conn.read(chunk).catch(() => null);
      if (n === null) this.#eof = true;
      else this.#buf += decoder.decode(chunk.subarray(0, n));
    }
    return this.#buf;
  }

  close(): void {
    try {
      this.conn.close();
    } catch { /* closed */ }
  }
}

const wsTest = (name: string, fn: () => Promise<void>) =>
  Deno.test({ name, ignore: unavailable !== undefined, fn });

wsTest(
  "websocket: 10,000 mixed messages echo byte-exact with permessage-deflate and a subprotocol; headers kept; counted and logged",
  async () => {
    const ws = await startWsEchoServer({ subprotocols: ["chat", "superchat"] });
    try {
      // A plain listener with http2: HTTP/1.1 connections pass the h2c preface check first.
      await using s = await launch({
        listen: { host: "127.0.0.1", port: 0, http2: true },
        backends: [{ url: `http://127.0.0.1:${ws.port}` }],
        health: { expectStatus: "200-499" },
        timeouts: { response: "2s" },
      });
      const report = await runWsClient(`ws://127.0.0.1:${s.ports[0]}/chat/room?x=1`, {
        messages: 10_000,
        subprotocols: ["chat"],
        whoami: true,
        closeCode: 4001,
      });
      assert.equal(report.ok, true, JSON.stringify(report));
      assert.equal(report.echoed, 10_000);
      assert.equal(report.mismatches, 0);
      assert.equal(report.subprotocol, "chat");
      assert.match(report.extensions ?? "", /permessage-deflate/);
      assert.equal(report.pong, true);
      assert.equal(report.close_code, 4001);
      const headers = report.whoami!.headers.map(([k, v]) => [k.toLowerCase(), v]);
      const header = (name: string) => headers.find(([k]) => k === name)?.[1];
      assert.equal(report.whoami!.path, "/chat/room?x=1");
      assert.equal(header("upgrade"), "websocket");
      assert.equal(header("connection"), "upgrade");
      assert.ok(header("sec-websocket-key"));
      assert.equal(header("sec-websocket-protocol"), "chat");
      assert.match(header("sec-websocket-extensions") ?? "", /permessage-deflate/);
      assert.equal(header("x-forwarded-for"), "127.0.0.1");

      // The request is over when the tunnel closes: one access log line, status 101.
      const line = await record(s, (r) => r.status === 101);
      assert.equal(line.protocol, "HTTP/1.1");
      assert.equal(line.target, "/chat/room?x=1");
      assert.ok((line.bytes as number) > report.bytes / 2, `bytes ${line.bytes}`);
      assert.equal(line.error, undefined);
      assert.equal(
        await metric(s, /^sluice_tunnels_total\{pool="default",backend="127\.0\.0\.1:\d+"\}/),
        1,
      );
      assert.equal(
        await metric(s, /^sluice_requests_total\{.*code="101".*protocol="HTTP\/1\.1"/),
        1,
      );
    } finally {
      await ws.close();
    }
  },
);

wsTest("websocket: the close code and reason the backend sends reach the client", async () => {
  const ws = await startWsEchoServer();
  try {
    await using s = await launch({
      listen: { host: "127.0.0.1", port: 0 },
      backends: [{ url: `http://127.0.0.1:${ws.port}` }],
      health: { expectStatus: "200-499" },
    });
    const report = await runWsClient(`ws://127.0.0.1:${s.ports[0]}/`, {
      messages: 50,
      closeCode: 4321,
      compression: false,
    });
    assert.equal(report.ok, true, JSON.stringify(report));
    assert.equal(report.close_code, 4321);
    assert.equal(report.close_reason, "bye from backend");
  } finally {
    await ws.close();
  }
});

wsTest(
  "websocket: wss through a TLS listener with http2 (the client chose HTTP/1.1 by ALPN)",
  async () => {
    await using ca = await createTestCa();
    const cert = await ca.issue("ws", { sans: ["localhost", "IP:127.0.0.1"] });
    const ws = await startWsEchoServer({ subprotocols: ["chat"] });
    try {
      await using s = await launch({
        listen: [{
          host: "127.0.0.1",
          port: 0,
          tls: { certificates: [{ cert: cert.certFile, key: cert.keyFile }] },
          http2: true,
        }],
        backends: [{ url: `http://127.0.0.1:${ws.port}` }],
        health: { expectStatus: "200-499" },
      });
      const report = await runWsClient(`wss://127.0.0.1:${s.ports[0]}/secure`, {
        messages: 2_000,
        subprotocols: ["chat"],
        caFile: ca.caFile,
        whoami: true,
      });
      assert.equal(report.ok, true, JSON.stringify(report));
      assert.equal(report.echoed, 2_000);
      assert.equal(report.mismatches, 0);
      assert.equal(report.subprotocol, "chat");
      const proto = report.whoami!.headers.find(([k]) => k.toLowerCase() === "x-forwarded-proto");
      assert.equal(proto?.[1], "https");

      // A client that offers http/1.1 by ALPN explicitly, with a hand-made handshake and frame.
      const conn = await Deno.connectTls({
        hostname: "127.0.0.1",
        port: s.ports[0],
        caCerts: [ca.caCert],
        alpnProtocols: ["http/1.1"],
      });
      try {
        assert.equal((await conn.handshake()).alpnProtocol, "http/1.1");
        const key = btoa(String.fromCharCode(...crypto.getRandomValues(new Uint8Array(16))));
        await conn.write(encoder.encode(
          `GET /raw HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n` +
            `Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: ${key}\r\n\r\n`,
        ));
        // A masked text frame "ping!" right behind the handshake.
        const mask = crypto.getRandomValues(new Uint8Array(4));
        const payload = encoder.encode("ping!");
        const frame = new Uint8Array([0x81, 0x80 | payload.length, ...mask, ...payload]);
        for (let i = 0; i < payload.length; i++) frame[6 + i] ^= mask[i % 4];
        await conn.write(frame);
        let got: Uint8Array = new Uint8Array(0);
        const buf = new Uint8Array(4096);
        const text = () => new TextDecoder("latin1").decode(got);
        while (!text().includes("\r\n\r\n") || !text().endsWith("ping!")) {
          const n = await conn.read(buf);
          if (n === null) throw new Error(`closed: ${text()}`);
          got = concat([got, buf.subarray(0, n)]);
        }
        assert.match(text(), /^HTTP\/1\.1 101 /);
        assert.match(text(), /\r\nsec-websocket-accept: /i);
        assert.ok(text().endsWith("\x81\x05ping!"), "the echo, an unmasked text frame");
      } finally {
        conn.close();
      }
    } finally {
      await ws.close();
    }
  },
);

Deno.test("upgrade: a made-up protocol tunnels raw bytes: early bytes both ways, half-close passed on", async () => {
  const backend = xEchoBackend();
  try {
    await using s = await launch({
      listen: { host: "127.0.0.1", port: 0 },
      backends: [{ url: backend.url }],
    });
    // Bytes right behind the request head, before any 101: they reach the backend after it.
    const client = await XEchoClient.open(s.ports[0], "early ");
    try {
      const head = await client.until("\r\n\r\n");
      assert.match(head, /^HTTP\/1\.1 101 Switching Protocols\r\n/);
      assert.match(head, /\r\nconnection: upgrade\r\n/i);
      assert.match(head, /\r\nupgrade: x-echo\/1\r\n/i);
      assert.match(head, /\r\nX-Backend: echo\r\n/);
      assert.doesNotMatch(head, /content-length|transfer-encoding/i);
      // The backend's bytes that came with its 101 head, then the echo of the early bytes.
      assert.equal(await client.until("HELLO\n"), "HELLO\n");
      assert.equal(await client.until("EARLY "), "EARLY ");
      // Nothing is parsed: anything goes, HTTP-looking bytes included.
      const raw = "GET / HTTP/1.1\r\n\r\nbinary \u0000\u00ff end";
      await client.send(raw);
      assert.equal(await client.until("END"), raw.toUpperCase());
      // Half-close: the backend reads EOF, still answers, then closes.
      await client.conn.closeWrite();
      assert.equal(await client.closed(), "BYE\n");
    } finally {
      client.close();
    }
    const head = backend.heads.find((h) => h.startsWith("GET /tunnel"))!;
    assert.match(head, /\r\nconnection: upgrade\r\nUpgrade: x-echo\/1\r\n/);
    const line = await record(s, (r) => r.status === 101);
    const sent = "HELLO\nEARLY " + "GET / HTTP/1.1\r\n\r\nbinary \u0000\u00ff end".toUpperCase() +
      "BYE\n";
    assert.equal(line.bytes, encoder.encode(sent).length, "bytes to the client");
  } finally {
    backend.close();
  }
});

Deno.test("upgrade: an answer other than 101 is relayed as a normal response; the connection goes on", async () => {
  const backend = xEchoBackend();
  try {
    await using s = await launch({
      listen: { host: "127.0.0.1", port: 0 },
      backends: [{ url: backend.url }],
    });
    using c = await RawClient.connect(s.ports[0]);
    await c.send(
      "GET /refuse HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: x-echo/1\r\n\r\n",
    );
    const res = await c.readResponse();
    assert.equal(res.status, 426);
    assert.equal(res.text(), "nope");
    // An Upgrade without `Connection: upgrade` is not one: the header is dropped, as hop-by-hop.
    await c.send("GET /plain HTTP/1.1\r\nHost: x\r\nUpgrade: x-echo/1\r\n\r\n");
    const plain = await c.readResponse();
    assert.equal(plain.status, 400);
    assert.equal(plain.text(), "no upgrade");
    assert.doesNotMatch(backend.heads.at(-1)!, /upgrade/i);
  } finally {
    backend.close();
  }
});

Deno.test("upgrade: a tunnel idle past timeouts.tunnel is closed; a busy one outlives timeouts.response", async () => {
  const backend = xEchoBackend();
  try {
    await using s = await launch({
      listen: { host: "127.0.0.1", port: 0 },
      backends: [{ url: backend.url }],
      timeouts: { tunnel: "1500ms", response: "500ms" },
    });
    const idle = await XEchoClient.open(s.ports[0]);
    const busy = await XEchoClient.open(s.ports[0]);
    try {
      await idle.until("HELLO\n");
      await busy.until("HELLO\n");
      const opened = Date.now();
      const closed = idle.closed().then(() => Date.now() - opened);
      // Busy: a byte every 300 ms for 3 s, twice timeouts.tunnel and six times timeouts.response.
      for (let i = 0; i < 10; i++) {
        await new Promise((r) => setTimeout(r, 300));
        await busy.send(`m${i}.`);
        assert.equal(await busy.until(`M${i}.`), `M${i}.`);
      }
      const after = await closed;
      assert.ok(after >= 1_400, `closed after ${after} ms`);
      assert.ok(after < 3_000 + 1_500, `closed after ${after} ms`);
      const line = await record(s, (r) => r.status === 101 && r.error !== undefined);
      assert.match(String(line.error), /tunnel idle for 1500ms/);
    } finally {
      idle.close();
      busy.close();
    }
  } finally {
    backend.close();
  }
});

Deno.test("upgrade: at shutdown open tunnels keep going until timeouts.drain, then close; exit 0", async () => {
  const backend = xEchoBackend();
  try {
    const s = await launch({
      listen: { host: "127.0.0.1", port: 0 },
      backends: [{ url: backend.url }],
      timeouts: { drain: "1500ms" },
    });
    const client = await XEchoClient.open(s.ports[0]);
    try {
      await client.until("HELLO\n");
      s.kill("SIGTERM");
      await s.stderr.waitFor(/shutting down: draining/);
      const draining = Date.now();
      await client.send("still here");
      assert.equal(await client.until("STILL HERE"), "STILL HERE", "open during the drain");
      await client.closed();
      const after = Date.now() - draining;
      assert.ok(after >= 1_200, `tunnel closed ${after} ms into the drain`);
      const status = await s.process.status;
      assert.equal(status.code, 0);
      await s.stop();
      const line = await record(s, (r) => r.status === 101);
      assert.equal(line.error, "closed at shutdown");
    } finally {
      client.close();
      await s[Symbol.asyncDispose]();
    }
  } finally {
    backend.close();
  }
});

Deno.test("upgrade: never retried once sent (a reset, a retryOn status), while a plain GET is", async () => {
  for (const mode of ["502", "reset"] as const) {
    let hits = 0;
    const servers = [0, 1].map(() => {
      const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
      (async () => {
        for await (const conn of listener) {
          (async () => {
            const buf = new Uint8Array(65536);
            let text = "";
            while (!text.includes("\r\n\r\n")) {
              const n = await conn.read(buf);
              if (n === null) return;
              text += decoder.decode(buf.subarray(0, n));
            }
            if (/sluice-health-check/i.test(text)) {
              await conn.write(encoder.encode("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"));
              return;
            }
            hits++;
            if (mode === "502") {
              await conn.write(
                encoder.encode(
                  "HTTP/1.1 502 Bad Gateway\r\ncontent-length: 3\r\nconnection: close\r\n\r\nbad",
                ),
              );
            }
          })().catch(() => {}).finally(() => {
            try {
              conn.close();
            } catch { /* closed */ }
          });
        }
      })().catch(() => {});
      return listener;
    });
    try {
      await using s = await launch({
        listen: { host: "127.0.0.1", port: 0 },
        backends: servers.map((l) => ({
          url: `http://127.0.0.1:${(l.addr as Deno.NetAddr).port}`,
        })),
        retries: 1,
        retryOn: [502],
        outlier: { consecutiveFailures: 0 },
      });
      const plain = await RawClient.connect(s.ports[0]);
      await plain.send("GET /plain HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
      assert.equal((await plain.readResponse()).status, 502);
      plain.close();
      assert.equal(hits, 2, `${mode}: a plain GET is tried on both backends`);
      hits = 0;
      const up = await RawClient.connect(s.ports[0]);
      await up.send(
        "GET /up HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
      );
      assert.equal((await up.readResponse()).status, 502);
      up.close();
      assert.equal(hits, 1, `${mode}: an upgrade reached one backend only`);
    } finally {
      for (const l of servers) l.close();
    }
  }
});

Deno.test("server: open tunnels are counted; close() ends them at once and finishes their requests", async () => {
  const backend = xEchoBackend();
  const pool = new ConnectionPool("127.0.0.1", backend.port, false, {
    connectTimeout: 5_000,
    idleTimeout: 5_000,
  });
  const finished: { bytes: number; error?: string }[] = [];
  const server = serve({
    hostname: "127.0.0.1",
    port: 0,
    timeouts: { header: 5_000, idle: 5_000, client: 5_000, tunnel: 60_000 },
    handler: (req) =>
      exchange(pool, {
        method: req.method,
        head: `GET /tunnel HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: x-echo/1\r\n\r\n`,
        body: null,
        chunked: false,
        responseTimeout: 5_000,
        requestId: "r1",
        setCookie: undefined,
        upgrade: "x-echo/1",
      }, (bytes, error) => finished.push({ bytes, error })),
    onError: () => {},
  });
  try {
    const a = await XEchoClient.open(server.addr.port);
    const b = await XEchoClient.open(server.addr.port);
    await a.until("HELLO\n");
    await b.until("HELLO\n");
    assert.equal(server.tunnels, 2);
    assert.equal(pool.open, 2, "each tunnel holds its backend connection");
    await a.send("x");
    await a.until("X");
    a.conn.closeWrite();
    assert.equal(await a.closed(), "BYE\n");
    while ((server.tunnels as number) !== 1) await new Promise((r) => setTimeout(r, 5));
    assert.deepEqual(finished, [{ bytes: "HELLO\nX".length + 4, error: undefined }]);
    server.close();
    // Finished right away (an access log written next has the line), not a few turns later.
    assert.deepEqual(finished[1], { bytes: "HELLO\n".length, error: "closed at shutdown" });
    await b.closed();
    await server.finished;
    assert.equal(server.tunnels, 0);
    assert.equal(pool.open, 0);
    a.close();
    b.close();
  } finally {
    server.close();
    backend.close();
  }
});
