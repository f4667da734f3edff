/**
 * HTTPS backends with `tls: { ca, serverName, insecureSkipVerify }` per backend and per pool,
 * through main.ts: a backend whose certificate comes from a throwaway CA and names only a DNS
 * name (it is reached by IP), health checks over the same TLS settings, a backend's own `tls`
 * shadowing its pool's, the PROXY protocol header sent in the clear before TLS, and a CA file
 * rewritten in place picked up by new connections.
 */
import assert from "node:assert/strict";
import { parseProxyHeader, type ProxyHeader } from "../lib/http1/proxy_protocol.ts";
import { waitFor } from "./helpers.ts";
import { launchSluice, PATIENCE, type Sluice } from "./ops_helpers.ts";
import { createTestCa, type TestCa, type TestCert } from "./tls_helpers.ts";

let ca: TestCa;
let other: TestCa;
let cert: TestCert;
const setup = (async () => {
  ca = await createTestCa();
  other = await createTestCa();
  cert = await ca.issue("backend", { sans: ["backend.internal"] });
})();

/** An HTTPS backend on 127.0.0.1 with the test certificate: answers with what it saw. */
function httpsBackend() {
  let health = 0;
  const server = Deno.serve({
    hostname: "127.0.0.1",
    port: 0,
    cert: cert.cert,
    key: cert.key,
    onListen() {},
  }, (req, info) => {
    if (req.headers.get("user-agent") === "sluice-health-check") {
      health++;
      return new Response("ok");
    }
    return Response.json({
      path: new URL(req.url).pathname,
      host: req.headers.get("host"),
      forwardedFor: req.headers.get("x-forwarded-for"),
      peer: info.remoteAddr.hostname,
    });
  });
  return {
    port: server.addr.port,
    url: `https://127.0.0.1:${server.addr.port}`,
    get health() {
      return health;
    },
    close: () => server.shutdown(),
  };
}

/**
 * A TCP front for `target` that requires a PROXY header in the clear first (records it), then
 * pumps the rest (the TLS handshake and traffic) to the HTTPS backend.
 */
function proxyFront(target: number) {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const headers: ProxyHeader[] = [];
  const errors: string[] = [];
  const pump = async (from: Deno.Conn, to: Deno.Conn) => {
    const buf = new Uint8Array(65536);
    try {
      for (;;) {
        const n = await from.read(buf);
        if (n === null) break;
        for (let o = 0; o < n;) o += await to.write(buf.subarray(o, n));
      }
      await to.closeWrite();
    } catch {
      try {
        to.close();
      } catch { /* closed */ }
    }
  };
  (async () => {
    for await (const conn of listener) {
      (async () => {
        const buf = new Uint8Array(8192);
        let end = 0;
        let header: ProxyHeader | undefined;
        try {
          while (!(header = parseProxyHeader(buf, 0, end))) {
            const n = await conn.read(buf.subarray(end));
            if (n === null) return conn.close();
            end += n;
          }
        } catch (err) {
          errors.push(String(err));
          return conn.close();
        }
        headers.push(header);
        const inner = await Deno.connect({ hostname: "127.0.0.1", port: target });
        for (let o = header.size; o < end;) o += await inner.write(buf.subarray(o, end));
        await Promise.all([pump(conn, inner), pump(inner, conn)]);
        conn.close();
        inner.close();
      })().catch(() => {});
    }
  })().catch(() => {});
  const port = (listener.addr as Deno.NetAddr).port;
  return { port, url: `https://127.0.0.1:${port}`, headers, errors, close: () => listener.close() };
}

/** sluice on one plain listener from `config`. */
function launch(config: Record<string, unknown>): Promise<Sluice> {
  return launchSluice({ listen: { host: "127.0.0.1", port: 0 }, ...config }, { settle: false });
}

async function get(port: number, path: string) {
  const res = await fetch(`http://127.0.0.1:${port}${path}`);
  return { status: res.status, text: await res.text() };
}

Deno.test("https backends: a private CA and serverName per backend or per pool; a backend's own tls wins; health checks use them", async () => {
  await setup;
  const backend = httpsBackend();
  try {
    const verified = { ca: ca.caFile, serverName: "backend.internal" };
    await using s = await launch({
      pools: {
        own: { backends: [{ url: backend.url, tls: verified }] },
        pooled: { tls: verified, backends: [{ url: backend.url }] },
        shadowed: {
          tls: verified,
          backends: [{ url: backend.url, tls: { ca: ca.caFile, serverName: "other.internal" } }],
        },
        insecure: { backends: [{ url: backend.url, tls: { insecureSkipVerify: true } }] },
        untrusted: { backends: [{ url: backend.url }] },
      },
      routes: ["own", "pooled", "shadowed", "insecure", "untrusted"].map((pool) => ({
        path: `/${pool}`,
        pool,
      })),
      health: { interval: "500ms" },
    });
    for (const pool of ["own", "pooled", "insecure"]) {
      const res = await get(s.port, `/${pool}`);
      assert.equal(res.status, 200, `${pool}: ${res.text}`);
      const seen = JSON.parse(res.text);
      assert.equal(seen.path, `/${pool}`);
      assert.equal(seen.host, `127.0.0.1:${s.port}`, "the client's Host is kept");
      assert.equal(seen.forwardedFor, "127.0.0.1");
    }
    // Not verifiable: no backend up (the health check failed for the same reason) or 502.
    for (const pool of ["shadowed", "untrusted"]) {
      const res = await get(s.port, `/${pool}`);
      assert.ok(res.status === 503 || res.status === 502, `${pool}: ${res.status}`);
    }
    const down = (pool: string) =>
      s.stderr.waitFor(new RegExp(`is down: .*pool=${pool}`), 1, PATIENCE);
    const [shadowed] = await down("shadowed");
    assert.match(shadowed, /NotValidForName|not valid for name|certificate/i, shadowed);
    const [untrusted] = await down("untrusted");
    assert.match(untrusted, /UnknownIssuer|unknown issuer|certificate/i, untrusted);
    await waitFor(() => backend.health >= 3 * 2, "health checks over TLS", PATIENCE);
    assert.equal(s.stderr.matching(/is down: .*pool=(own|pooled|insecure)\b/).length, 0);
  } finally {
    await backend.close();
  }
});

Deno.test("https backends: the PROXY protocol header goes out in the clear before the TLS handshake", async () => {
  await setup;
  const backend = httpsBackend();
  const front = proxyFront(backend.port);
  try {
    await using s = await launch({
      backends: [{
        url: front.url,
        proxyProtocol: "v2",
        tls: { ca: ca.caFile, serverName: "backend.internal" },
      }],
    });
    const client = await Deno.connect({ hostname: "127.0.0.1", port: s.port });
    const clientPort = (client.localAddr as Deno.NetAddr).port;
    try {
      await client.write(
        new TextEncoder().encode("GET /via-proxy HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
      );
      let text = "";
      const buf = new Uint8Array(65536);
      for (;;) {
        const n = await client.read(buf);
        if (n === null) break;
        text += new TextDecoder().decode(buf.subarray(0, n));
      }
      assert.match(text, /^HTTP\/1\.1 200 /, text);
      assert.match(text, /"path":"\/via-proxy"/);
    } finally {
      client.close();
    }
    assert.deepEqual(front.errors, []);
    const traffic = front.headers.find((h) => h.addresses?.source.port === clientPort);
    assert.ok(traffic, JSON.stringify(front.headers));
    assert.equal(traffic.version, 2);
    assert.equal(traffic.addresses!.source.ip, "127.0.0.1");
    assert.equal(traffic.addresses!.destination.port, s.port);
    // Health probes send a LOCAL header (no addresses), then TLS, and pass.
    await waitFor(() => backend.health > 0, "a health check through the front", PATIENCE);
    assert.ok(front.headers.some((h) => h.addresses === undefined));
  } finally {
    front.close();
    await backend.close();
  }
});

Deno.test("https backends: a CA file rewritten in place is read again for new connections", async () => {
  await setup;
  const backend = httpsBackend();
  const dir = await Deno.makeTempDir({ prefix: "sluice_ca_" });
  try {
    const caFile = `${dir}/ca.pem`;
    // At first the wrong CA: the backend cannot be verified.
    await Deno.writeTextFile(caFile, other.caCert);
    await using s = await launch({
      backends: [{ url: backend.url, tls: { ca: caFile, serverName: "backend.internal" } }],
      health: { interval: "200ms", healthyThreshold: 1 },
    });
    await s.stderr.waitFor(/is down: invalid peer certificate/, 1, PATIENCE);
    assert.notEqual((await get(s.port, "/")).status, 200);
    await Deno.writeTextFile(caFile, ca.caCert);
    await s.stderr.waitFor(/is back up/, 1, PATIENCE);
    const res = await get(s.port, "/fixed");
    assert.equal(res.status, 200, res.text);
  } finally {
    await backend.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("https backends: clean up the throwaway CAs", async () => {
  await setup;
  await ca.cleanup();
  await other.cleanup();
});
