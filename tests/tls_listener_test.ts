/**
 * lib/tls/listener.ts (SNI, ALPN, reload without dropping connections, minVersion 1.3) and
 * lib/tls/backend.ts (HTTPS backends with a private CA), with openssl s_client and Deno's own
 * TLS client against certificates from a throwaway CA. Native reloads need `--unstable-net`.
 */
import assert from "node:assert/strict";
import { loadCertificates, type LoadedCertificate } from "../lib/tls/certificates.ts";
import {
  type AcceptedTls,
  handshake,
  openTlsListener,
  reusePortAllowed,
  type TlsListener,
  type TlsListenerOptions,
} from "../lib/tls/listener.ts";
import { connectBackendTls } from "../lib/tls/backend.ts";
import { parseClientHello } from "../lib/tls/client_hello.ts";
import { createTestCa, sClient, type TestCa } from "./tls_helpers.ts";

const SERVER_NAME = Symbol.for("unstableServerName");
let ca: TestCa;
let certs: Record<string, LoadedCertificate>;
const setup = (async () => {
  ca = await createTestCa();
  for (
    const [name, sans] of Object.entries({
      one: ["one.test", "*.one.test"],
      two: ["two.test"],
      one2: ["one.test", "*.one.test"],
    })
  ) {
    await ca.issue(name, { sans, cn: name });
  }
  const loaded = loadCertificates(
    ["one", "two", "one2"].map((n) => ({ cert: `${n}.pem`, key: `${n}.key` })),
    { baseDir: ca.dir },
  );
  assert.deepEqual(loaded.problems, []);
  certs = {
    one: loaded.certificates[0],
    two: loaded.certificates[1],
    one2: loaded.certificates[2],
  };
})();

/** Native reloads without `--unstable-net` close the port for a moment ("reopen"). */
const SWAP = reusePortAllowed();
if (!SWAP) console.warn("run with --unstable-net to test gapless native reloads (reusePort)");
const NATIVE = true;

/**
 * openTlsListener on 127.0.0.1, port 0, with `serve` (if given) running on it; disposal closes
 * it (open connections go on), then waits for `serve` to end.
 */
function listen(
  options: Omit<TlsListenerOptions, "hostname" | "port">,
  serve?: (listener: TlsListener) => Promise<void>,
): TlsListener & AsyncDisposable {
  const listener = openTlsListener({ hostname: "127.0.0.1", port: 0, ...options });
  const served = serve?.(listener);
  return Object.assign(listener, {
    async [Symbol.asyncDispose]() {
      listener.close();
      await served;
    },
  });
}

/** Serves each accepted connection: every request gets `alpn cn=<tag> client=<ip:port> sni=<name>`. */
function serveAll(listener: TlsListener, tag: () => string): Promise<void> {
  return (async () => {
    for (;;) {
      let accepted: AcceptedTls;
      try {
        accepted = await listener.accept();
      } catch {
        return;
      }
      answer(accepted, tag());
    }
  })();
}

async function answer(accepted: AcceptedTls, tag: string): Promise<void> {
  const { conn } = accepted;
  try {
    const alpn = await handshake(conn, 10_000);
    const buf = new Uint8Array(4096);
    for (;;) {
      const n = await conn.read(buf);
      if (n === null) break;
      const text =
        `alpn=${alpn} tag=${tag} client=${accepted.remoteAddr.hostname}:${accepted.remoteAddr.port} sni=${accepted.serverName}`;
      await conn.write(
        new TextEncoder().encode(
          `HTTP/1.1 200 OK\r\ncontent-length: ${text.length}\r\n\r\n${text}`,
        ),
      );
    }
  } catch {
    // client gone
  } finally {
    try {
      conn.close();
    } catch { /* closed */ }
  }
}

/**
 * Accepts one connection, completes its handshake and hands each read to `onData` until the
 * client closes its side; then closes the connection.
 */
async function serveFirst(
  listener: TlsListener,
  onData: (conn: Deno.TlsConn, data: Uint8Array) => Promise<void>,
): Promise<void> {
  const { conn } = await listener.accept();
  await handshake(conn, 10_000);
  const buf = new Uint8Array(65536);
  for (;;) {
    const n = await conn.read(buf);
    if (n === null) break;
    await onData(conn, buf.subarray(0, n));
  }
  conn.close();
}

/** A Deno TLS client that verifies against the test CA for `name`. */
async function connect(port: number, name: string): Promise<Deno.TlsConn> {
  const conn = await Deno.connectTls(
    {
      hostname: "127.0.0.1",
      port,
      caCerts: [ca.caCert],
      [SERVER_NAME]: name,
    } as Deno.ConnectTlsOptions,
  );
  await conn.handshake();
  return conn;
}

async function request(conn: Deno.Conn): Promise<string> {
  await conn.write(new TextEncoder().encode("GET / HTTP/1.1\r\nhost: x\r\n\r\n"));
  const buf = new Uint8Array(4096);
  let text = "";
  while (
    !/\r\n\r\n[^]*$/.test(text) ||
    text.length <
      text.indexOf("\r\n\r\n") + 4 + Number(text.match(/content-length: (\d+)/)?.[1] ?? 0)
  ) {
    const n = await conn.read(buf);
    if (n === null) throw new Error("closed: " + text);
    text += new TextDecoder().decode(buf.subarray(0, n));
  }
  return text.slice(text.indexOf("\r\n\r\n") + 4);
}

Deno.test({
  name:
    "tls listener (native): SNI picks the certificate, unknown names and no SNI get the first, ALPN h2",
  ignore: !NATIVE,
  async fn() {
    await setup;
    await using listener = listen({
      certificates: [certs.one, certs.two],
      alpnProtocols: ["h2", "http/1.1"],
    }, (l) => serveAll(l, () => "x"));
    const port = listener.addr.port;
    assert.equal((await sClient(port, { serverName: "one.test" })).cn, "one");
    assert.equal((await sClient(port, { serverName: "two.test" })).cn, "two");
    assert.equal((await sClient(port, { serverName: "api.one.test" })).cn, "one", "wildcard");
    assert.equal((await sClient(port, { serverName: "TWO.TEST" })).cn, "two", "case");
    assert.equal((await sClient(port, { serverName: "nobody.example" })).cn, "one", "default");
    assert.equal((await sClient(port, {})).cn, "one", "no SNI");
    const h2 = await sClient(port, { serverName: "two.test", alpn: ["h2", "http/1.1"] });
    assert.equal(h2.alpn, "h2");
    const h1 = await sClient(port, { serverName: "two.test", alpn: ["http/1.1"] });
    assert.equal(h1.alpn, "http/1.1");
    // Deno's client verifies the chain and name, and the connection carries HTTP.
    const conn = await connect(port, "two.test");
    assert.match(await request(conn), /^alpn=null tag=x client=127\.0\.0\.1:\d+ sni=undefined$/);
    conn.close();
  },
});

Deno.test({
  name:
    "tls listener (native): reload serves the new certificate to the next handshake; open connections keep working",
  ignore: !NATIVE,
  async fn() {
    await setup;
    let generation = "old";
    await using listener = listen({
      certificates: [certs.one, certs.two],
      grace: 20,
    }, (l) => serveAll(l, () => generation));
    const port = listener.addr.port;
    const before = await connect(port, "one.test");
    assert.match(await request(before), /tag=old/);
    assert.equal((await sClient(port, { serverName: "one.test" })).cn, "one");
    generation = "new";
    await listener.reload([certs.one2, certs.two]); // the old socket is retired after the grace
    assert.equal((await sClient(port, { serverName: "one.test" })).cn, "one2");
    assert.equal((await sClient(port, { serverName: "two.test" })).cn, "two");
    // The connection from before the reload still answers (same TLS session, still open).
    assert.match(await request(before), /tag=old/);
    await new Promise((r) => setTimeout(r, 100)); // past the grace: the old socket is closed
    assert.match(await request(before), /tag=old/);
    before.close();
    const after = await connect(port, "one.test");
    assert.match(await request(after), /tag=new/);
    after.close();
  },
});

Deno.test({
  name: "tls listener (native): handshakes in a loop across 10 reloads all succeed or are counted",
  ignore: !NATIVE,
  async fn() {
    await setup;
    await using listener = listen({
      certificates: [certs.one],
      grace: 50,
    }, (l) => serveAll(l, () => "x"));
    const port = listener.addr.port;
    let ok = 0;
    let failed = 0;
    let stop = false;
    const clients = Array.from({ length: 4 }, async () => {
      while (!stop) {
        try {
          const conn = await connect(port, "one.test");
          await request(conn);
          conn.close();
          ok++;
        } catch {
          failed++;
        }
      }
    });
    try {
      for (let i = 0; i < 10; i++) {
        const seen = ok;
        // Wait for traffic between reloads rather than for time.
        while (ok < seen + 5) await new Promise((r) => setTimeout(r, 5));
        listener.reload([i % 2 ? certs.one : certs.one2]);
      }
      const seen = ok;
      while (ok < seen + 5) await new Promise((r) => setTimeout(r, 5));
    } finally {
      stop = true;
      await Promise.all(clients);
    }
    const migrate = await Deno.readTextFile("/proc/sys/net/ipv4/tcp_migrate_req").catch(() => "0");
    console.log(
      `handshakes ok=${ok} failed=${failed} over 10 reloads (tcp_migrate_req=${migrate.trim()})`,
    );
    assert.ok(ok >= 55);
    assert.equal(listener.reloads, SWAP ? "swap" : "reopen");
    // Without tcp_migrate_req the kernel resets what sits in the old socket's queue at close.
    if (!SWAP) return; // "reopen": handshakes during the gap are refused, by design
    if (migrate.trim() === "1") assert.equal(failed, 0);
    else assert.ok(failed <= 10, `${failed} failed handshakes over 10 reloads`);
  },
});

Deno.test({
  name:
    "tls listener (native): the resolver cache is bounded by replacing the listener after maxNames names",
  ignore: !NATIVE,
  async fn() {
    await setup;
    await using listener = listen({
      certificates: [certs.one, certs.two],
      maxNames: 3,
      grace: 10,
    }, (l) => serveAll(l, () => "x"));
    const port = listener.addr.port;
    for (let i = 0; i < 10; i++) {
      const name = i % 3 === 0 ? "two.test" : `n${i}.one.test`;
      const seen = await sClient(port, { serverName: name });
      assert.equal(seen.cn, i % 3 === 0 ? "two" : "one", `${name}: ${seen.output}`);
    }
  },
});

Deno.test({
  name: "tls listener (native): handshake() gives up on a client that never sends a ClientHello",
  ignore: !NATIVE,
  async fn() {
    await setup;
    await using listener = listen({
      certificates: [certs.one],
    });
    const tcp = await Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port });
    const accepted = await listener.accept();
    const started = Date.now();
    await assert.rejects(handshake(accepted.conn, 200));
    assert.ok(Date.now() - started < 5_000);
    // Deno 2.9 keeps the socket itself open in its handshake task until the client sends or
    // leaves (see the notes): the client has to hang up here.
    tcp.close();
  },
});

Deno.test("tls listener (front): a client that never sends a ClientHello is disconnected", async () => {
  await setup;
  await using listener = listen({
    certificates: [certs.one],
    mode: "front",
    helloTimeout: 200,
  });
  const tcp = await Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port });
  const started = Date.now();
  assert.equal(await tcp.read(new Uint8Array(16)), null, "the server closed the socket");
  assert.ok(Date.now() - started < 5_000);
  tcp.close();
});

Deno.test("tls listener (front): minVersion 1.3 refuses TLS 1.2 with an alert, serves 1.3 with SNI and client address", async () => {
  await setup;
  await using listener = listen({
    certificates: [certs.one, certs.two],
    minVersion: "1.3",
    alpnProtocols: ["h2", "http/1.1"],
  }, (l) => serveAll(l, () => "front"));
  assert.equal(listener.mode, "front");
  const port = listener.addr.port;
  const old = await sClient(port, { serverName: "two.test", version: "-tls1_2" });
  assert.equal(old.ok, false);
  assert.match(old.output, /alert protocol version|protocol version/);
  const modern = await sClient(port, {
    serverName: "two.test",
    version: "-tls1_3",
    alpn: ["h2"],
  });
  assert.equal(modern.version, "TLSv1.3");
  assert.equal(modern.cn, "two");
  assert.equal(modern.alpn, "h2");
  assert.equal((await sClient(port, {})).cn, "one");
  const conn = await connect(port, "two.test");
  const local = conn.localAddr as Deno.NetAddr;
  assert.equal(
    await request(conn),
    `alpn=null tag=front client=127.0.0.1:${local.port} sni=two.test`,
  );
  // curl refuses to go below what the server allows.
  const curl = await new Deno.Command("curl", {
    args: [
      "-s",
      "--tls-max",
      "1.2",
      "--cacert",
      ca.caFile,
      "--resolve",
      `two.test:${port}:127.0.0.1`,
      `https://two.test:${port}/`,
    ],
  }).output();
  assert.notEqual(curl.code, 0);
  // Reload in front mode: the public socket stays, new handshakes see the new certificate.
  await listener.reload([certs.one2, certs.two]);
  assert.equal((await sClient(port, { serverName: "one.test" })).cn, "one2");
  assert.match(await request(conn), /tag=front/, "open connection survives the reload");
  conn.close();
});

Deno.test("tls listener (front): large requests and responses pass the pump byte-exact", async () => {
  await setup;
  await using listener = listen({
    certificates: [certs.one],
    mode: "front",
  }, (listener) =>
    serveFirst(listener, async (conn, data) => {
      for (let off = 0; off < data.length;) off += await conn.write(data.subarray(off));
    }));
  const conn = await connect(listener.addr.port, "one.test");
  const data = crypto.getRandomValues(new Uint8Array(65536));
  const payload = new Uint8Array(4 << 20);
  for (let i = 0; i < payload.length; i += data.length) payload.set(data, i);
  const writing = (async () => {
    for (let off = 0; off < payload.length;) off += await conn.write(payload.subarray(off));
    await conn.closeWrite();
  })();
  const got = new Uint8Array(payload.length);
  let have = 0;
  while (have < got.length) {
    const n = await conn.read(got.subarray(have));
    if (n === null) break;
    have += n;
  }
  await writing;
  assert.equal(have, payload.length);
  assert.deepEqual(got, payload);
  conn.close();
});

const FFI = Deno.permissions.querySync({ name: "ffi" }).state === "granted";
if (!FFI) console.warn("TCP_NODELAY test skipped: run with --allow-ffi");

for (const mode of ["native", "front"] as const) {
  Deno.test({
    name:
      `tls listener (${mode}): TCP_NODELAY — responses written in three pieces are not held ~40 ms by Nagle`,
    ignore: !FFI,
    async fn() {
      await setup;
      await using listener = listen({
        certificates: [certs.one],
        mode,
      }, (listener) => {
        const enc = (text: string) => new TextEncoder().encode(text);
        return serveFirst(listener, async (conn) => {
          // Head, then two chunks: each a separate small TLS record, as a proxy streams them.
          await conn.write(enc("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"));
          await conn.write(enc("6\r\nhello \r\n"));
          await conn.write(enc("6\r\nworld\n\r\n0\r\n\r\n"));
        });
      });
      assert.equal(listener.noDelay, true);
      const conn = await connect(listener.addr.port, "one.test");
      const request = new TextEncoder().encode("GET / HTTP/1.1\r\nhost: x\r\n\r\n");
      const buf = new Uint8Array(4096);
      const started = Date.now();
      for (let i = 0; i < 20; i++) {
        await conn.write(request);
        let text = "";
        while (!text.endsWith("0\r\n\r\n")) {
          const n = await conn.read(buf);
          if (n === null) throw new Error("closed");
          text += new TextDecoder().decode(buf.subarray(0, n));
        }
      }
      const took = Date.now() - started;
      conn.close();
      // With Nagle on, each exchange waits for a delayed ACK: 20 x ~44 ms = ~880 ms measured.
      assert.ok(took < 600, `20 exchanges took ${took} ms`);
    },
  });
}

Deno.test("client hello: parses SNI, versions and ALPN from a real ClientHello, asks for more when cut", async () => {
  // Capture what openssl s_client sends.
  const server = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const child = new Deno.Command("openssl", {
    args: [
      "s_client",
      "-connect",
      `127.0.0.1:${(server.addr as Deno.NetAddr).port}`,
      "-servername",
      "Hello.Example",
      "-alpn",
      "h2,http/1.1",
    ],
    stdin: "piped",
    stdout: "null",
    stderr: "null",
  }).spawn();
  const conn = await server.accept();
  const buf = new Uint8Array(16384);
  let end = 0;
  let hello = parseClientHello(buf, end);
  while (hello === "more") {
    const n = await conn.read(buf.subarray(end));
    if (n === null) break;
    end += n;
    hello = parseClientHello(buf, end);
  }
  conn.close();
  server.close();
  child.kill();
  await child.status;
  assert.ok(typeof hello === "object");
  assert.equal(hello.serverName, "hello.example");
  assert.ok(hello.versions.includes(0x0304) && hello.versions.includes(0x0303));
  assert.deepEqual(hello.alpn, ["h2", "http/1.1"]);
  assert.equal(hello.consumed, end);
  assert.equal(parseClientHello(buf, 20), "more");
  assert.equal(parseClientHello(new TextEncoder().encode("GET / HTTP/1.1\r\n"), 16), "invalid");
});

Deno.test("backend tls: private CA and a configured serverName verify a backend reached by IP", async () => {
  await setup;
  const backend = await ca.issue("backend", { sans: ["backend.internal"] });
  const server = Deno.serve({
    hostname: "127.0.0.1",
    port: 0,
    cert: backend.cert,
    key: backend.key,
    onListen() {},
  }, () => new Response("backend ok"));
  const port = server.addr.port;
  const get = async (conn: Deno.Conn) => {
    await conn.write(
      new TextEncoder().encode(
        "GET / HTTP/1.1\r\nhost: backend.internal\r\nconnection: close\r\n\r\n",
      ),
    );
    const chunks: Uint8Array<ArrayBuffer>[] = [];
    const buf = new Uint8Array(4096);
    for (;;) {
      const n = await conn.read(buf);
      if (n === null) break;
      chunks.push(buf.slice(0, n));
    }
    conn.close();
    return new TextDecoder().decode(await new Blob(chunks).arrayBuffer());
  };
  try {
    const verified = await connectBackendTls("127.0.0.1", port, {
      ca: [ca.caCert],
      serverName: "backend.internal",
    });
    assert.match(await get(verified), /backend ok$/);
    await assert.rejects(
      connectBackendTls("127.0.0.1", port, { ca: [ca.caCert] }),
      /not valid for name "127\.0\.0\.1"/,
    );
    await assert.rejects(
      connectBackendTls("127.0.0.1", port, { ca: [ca.caCert], serverName: "other.internal" }),
      /not valid for name/,
    );
    await assert.rejects(
      connectBackendTls("127.0.0.1", port, { serverName: "backend.internal" }),
      /UnknownIssuer/,
    );
    // With a PROXY-protocol-style prelude the handshake happens after it, verified the same way.
    // (Deno.serve would not parse a PROXY header, so the prelude here is empty.)
    const viaStartTls = await connectBackendTls("127.0.0.1", port, {
      ca: [ca.caCert],
      serverName: "backend.internal",
    }, new Uint8Array(0));
    assert.match(await get(viaStartTls), /backend ok$/);
    // insecureSkipVerify: any certificate, any name, no CA.
    const insecure = await connectBackendTls("127.0.0.1", port, {
      insecureSkipVerify: true,
      serverName: "whatever.example",
    });
    assert.match(await get(insecure), /backend ok$/);
    const insecureIp = await connectBackendTls("127.0.0.1", port, { insecureSkipVerify: true });
    assert.match(await get(insecureIp), /backend ok$/);
  } finally {
    await server.shutdown();
  }
});

Deno.test("backend tls: an insecure connection streams a large body both ways byte-exact", async () => {
  await setup;
  const backend = await ca.issue("backend2", { sans: ["backend.internal"] });
  const server = Deno.serve({
    hostname: "127.0.0.1",
    port: 0,
    cert: backend.cert,
    key: backend.key,
    onListen() {},
  }, async (req) => {
    const body = new Uint8Array(await req.arrayBuffer());
    const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", body));
    return new Response(body, { headers: { "x-sha": btoa(String.fromCharCode(...digest)) } });
  });
  try {
    const conn = await connectBackendTls("127.0.0.1", server.addr.port, {
      insecureSkipVerify: true,
    });
    const body = crypto.getRandomValues(new Uint8Array(60000));
    const big = new Uint8Array(3 << 20);
    for (let i = 0; i < big.length; i += body.length) {
      big.set(body.subarray(0, Math.min(body.length, big.length - i)), i);
    }
    const head = new TextEncoder().encode(
      `POST / HTTP/1.1\r\nhost: b\r\ncontent-length: ${big.length}\r\nconnection: close\r\n\r\n`,
    );
    const writing = (async () => {
      for (let off = 0; off < head.length;) off += await conn.write(head.subarray(off));
      for (let off = 0; off < big.length;) {
        off += await conn.write(big.subarray(off, off + 100_000));
      }
    })();
    const parts: Uint8Array<ArrayBuffer>[] = [];
    const buf = new Uint8Array(65536);
    for (;;) {
      const n = await conn.read(buf);
      if (n === null) break;
      parts.push(buf.slice(0, n));
    }
    await writing;
    conn.close();
    const all = new Uint8Array(await new Blob(parts).arrayBuffer());
    const text = new TextDecoder("latin1").decode(all.subarray(0, 1024));
    const start = text.indexOf("\r\n\r\n") + 4;
    const received = all.subarray(start);
    // Deno.serve answers chunked for a streamed body; compare after de-chunking if needed.
    const payload = /transfer-encoding: chunked/i.test(text.slice(0, start))
      ? dechunk(received)
      : received;
    assert.equal(payload.length, big.length);
    assert.deepEqual(payload, big);
  } finally {
    await server.shutdown();
  }
});

function dechunk(bytes: Uint8Array): Uint8Array {
  const out: Uint8Array[] = [];
  let p = 0;
  for (;;) {
    let eol = p;
    while (!(bytes[eol] === 13 && bytes[eol + 1] === 10)) eol++;
    const size = parseInt(new TextDecoder().decode(bytes.subarray(p, eol)), 16);
    if (size === 0) break;
    out.push(bytes.subarray(eol + 2, eol + 2 + size));
    p = eol + 2 + size + 2;
  }
  const total = new Uint8Array(out.reduce((n, c) => n + c.length, 0));
  let at = 0;
  for (const c of out) {
    total.set(c, at);
    at += c.length;
  }
  return total;
}

Deno.test("tls listener: clean up the throwaway CA", async () => {
  await setup;
  await ca.cleanup();
});
