/**
 * Several listeners and TLS termination through main.ts, with real clients: `redirectHttps`,
 * SNI choosing among certificates from a throwaway CA (openssl s_client, curl --resolve),
 * X-Forwarded-Proto, `minVersion: "1.3"`, certificate reload on SIGHUP (next handshake gets the
 * new certificate, an open connection keeps working, a broken file is rejected), `--check`
 * reporting certificate problems, and the TCP_NODELAY warning without `--allow-ffi`.
 */
import assert from "node:assert/strict";
import {
  configDir,
  type LaunchedSluice,
  launchSluice,
  PATIENCE,
  sighupReload,
  startTestBackends,
} from "./ops_helpers.ts";
import { checkConfig, TEST_WORKERS } from "./process_helpers.ts";
import { RawClient } from "./proxy_helpers.ts";
import { createTestCa, sClient, type TestCa, type TestCert } from "./tls_helpers.ts";

let ca: TestCa;
const certs: Record<string, TestCert> = {};
const setup = (async () => {
  ca = await createTestCa();
  certs.a = await ca.issue("a", { sans: ["a.example.com", "localhost"], cn: "a.example.com" });
  certs.b = await ca.issue("b", {
    sans: ["b.example.com", "*.b.example.com"],
    cn: "b.example.com",
  });
  certs.v1 = await ca.issue("v1", { sans: ["site.example.com"], cn: "site v1" });
  certs.v2 = await ca.issue("v2", { sans: ["site.example.com"], cn: "site v2" });
})();

/** sluice with its config in a temp dir, started with `--allow-ffi` unless `ffi` is false. */
function launch(
  config: Record<string, unknown>,
  { ffi = true, args = [] as string[] } = {},
): Promise<LaunchedSluice> {
  return launchSluice(config, { ffi, args, settle: false });
}

/** Sends SIGHUP and waits for the reload's outcome line; returns it. */
const hangup = (s: LaunchedSluice) => sighupReload(s, /configuration (reloaded|rejected)/);

/**
 * A temp dir holding `site.pem` and `site.key` (certificate v1) for a test to replace, and a
 * listener's `tls` naming them; disposal removes it.
 */
async function siteFiles(prefix: string) {
  const dir = await Deno.makeTempDir({ prefix });
  const certFile = `${dir}/site.pem`;
  const keyFile = `${dir}/site.key`;
  await Deno.writeTextFile(certFile, certs.v1.cert);
  await Deno.writeTextFile(keyFile, certs.v1.key);
  return {
    dir,
    certFile,
    keyFile,
    tls: { certificates: [{ cert: certFile, key: keyFile }] },
    async [Symbol.asyncDispose]() {
      await Deno.remove(dir, { recursive: true });
    },
  };
}

const tlsOf = (...names: string[]) => ({
  certificates: names.map((n) => ({ cert: certs[n].certFile, key: certs[n].keyFile })),
});

/** curl over TLS to `name` resolved to 127.0.0.1: exit code, stdout, stderr. */
async function curl(port: number, name: string, path: string, extra: string[] = []) {
  const out = await new Deno.Command("curl", {
    args: [
      "-sS",
      "--max-time",
      "20",
      "--cacert",
      ca.caFile,
      "--resolve",
      `${name}:${port}:127.0.0.1`,
      ...extra,
      `https://${name}:${port}${path}`,
    ],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder();
  return { code: out.code, stdout: text.decode(out.stdout), stderr: text.decode(out.stderr) };
}

/** A TLS client of our own on a keep-alive connection, trusting the test CA. */
async function tlsClient(port: number, serverName: string) {
  const conn = await Deno.connectTls({
    hostname: "127.0.0.1",
    port,
    caCerts: [ca.caCert],
    [Symbol.for("unstableServerName")]: serverName,
  } as Deno.ConnectTlsOptions);
  const decoder = new TextDecoder();
  return {
    conn,
    /** Sends GET `path` and returns the whole response text (Content-Length framed). */
    async get(path: string): Promise<string> {
      await conn.write(
        new TextEncoder().encode(`GET ${path} HTTP/1.1\r\nHost: ${serverName}\r\n\r\n`),
      );
      let text = "";
      const buf = new Uint8Array(65536);
      for (;;) {
        const n = await conn.read(buf);
        if (n === null) throw new Error(`connection closed; got ${text}`);
        text += decoder.decode(buf.subarray(0, n));
        const end = text.indexOf("\r\n\r\n");
        const length = /content-length: (\d+)/i.exec(text)?.[1];
        if (end !== -1 && length !== undefined && text.length >= end + 4 + Number(length)) {
          return text;
        }
      }
    },
    close: () => conn.close(),
  };
}

Deno.test("listeners: several ports; --port overrides the first; redirectHttps answers 308 to https", async () => {
  await setup;
  await using backends = await startTestBackends("b1");
  // The first listener's configured port is taken: only the --port override lets sluice start.
  const blocker = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  try {
    await using s = await launch({
      listen: [
        { host: "127.0.0.1", port: (blocker.addr as Deno.NetAddr).port, redirectHttps: 8443 },
        { host: "127.0.0.1", port: 0, redirectHttps: 443 },
        { host: "127.0.0.1", port: 0, tls: tlsOf("a") },
        { host: "127.0.0.1", port: 0 },
      ],
      backends: [{ url: backends[0].url }],
      health: { path: "/health" },
    }, { args: ["--port", "0"] });
    const [redirecting, redirecting443, secure, plain] = s.ports;
    assert.notEqual(redirecting, (blocker.addr as Deno.NetAddr).port);

    using c = await RawClient.connect(redirecting);
    await c.send("GET /a/b?q=1&r=2 HTTP/1.1\r\nHost: shop.example:8080\r\n\r\n");
    let res = await c.readResponse();
    assert.equal(res.status, 308);
    assert.equal(res.header("location"), "https://shop.example:8443/a/b?q=1&r=2");
    // Every method, keep-alive kept; a body is not read (the connection then closes).
    await c.send("HEAD /x HTTP/1.1\r\nHost: [2001:db8::1]:80\r\n\r\n");
    res = await c.readResponse("HEAD");
    assert.equal(res.status, 308);
    assert.equal(res.header("location"), "https://[2001:db8::1]:8443/x");
    await c.send("POST /form HTTP/1.1\r\nHost: shop.example\r\nContent-Length: 5\r\n\r\nhello");
    res = await c.readResponse();
    assert.equal(res.status, 308);
    assert.equal(res.header("location"), "https://shop.example:8443/form");

    // HTTP/1.0 without Host: the address the client connected to.
    using c10 = await RawClient.connect(redirecting);
    await c10.send("GET /old HTTP/1.0\r\n\r\n");
    assert.equal((await c10.readResponse()).header("location"), "https://127.0.0.1:8443/old");

    // The default HTTPS port is left out.
    using c443 = await RawClient.connect(redirecting443);
    await c443.send("GET / HTTP/1.1\r\nHost: shop.example\r\n\r\n");
    assert.equal((await c443.readResponse()).header("location"), "https://shop.example/");
    assert.equal(backends[0].hits, 0, "redirects never reach a backend");

    // The TLS and the plain listener proxy as usual.
    const viaTls = await curl(secure, "a.example.com", "/");
    assert.equal(viaTls.stdout, "b1", viaTls.stderr);
    using p = await RawClient.connect(plain);
    await p.send("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert.equal((await p.readResponse()).text(), "b1");
  } finally {
    blocker.close();
  }
});

Deno.test("tls: SNI picks the certificate by SAN (RFC 6125 wildcard), the first is the default; X-Forwarded-Proto: https", async () => {
  await setup;
  await using backends = await startTestBackends("b1");
  await using s = await launch({
    listen: [{ host: "127.0.0.1", port: 0, tls: tlsOf("a", "b") }],
    backends: [{ url: backends[0].url }],
  });
  const port = s.ports[0];
  const seen = async (serverName?: string) =>
    (await sClient(port, { serverName, ca: ca.caFile })).cn;
  assert.equal(await seen("a.example.com"), "a.example.com");
  assert.equal(await seen("b.example.com"), "b.example.com");
  assert.equal(await seen("www.b.example.com"), "b.example.com", "*.b.example.com");
  assert.equal(await seen("x.www.b.example.com"), "a.example.com", "a wildcard covers one label");
  assert.equal(await seen("unknown.example.org"), "a.example.com", "no match: the first");
  assert.equal(await seen(undefined), "a.example.com", "no SNI: the first");

  for (const [name, extra] of [["a.example.com", []], ["www.b.example.com", ["--http1.1"]]]) {
    const res = await curl(port, name as string, "/echo", extra as string[]);
    assert.equal(res.code, 0, res.stderr);
    const headers = new Map(JSON.parse(res.stdout).headers as [string, string][]);
    assert.equal(headers.get("x-forwarded-proto"), "https");
    assert.equal(headers.get("x-forwarded-host"), `${name}:${port}`);
  }
});

Deno.test("tls: minVersion 1.3 refuses TLS 1.2 clients and serves TLS 1.3 ones", async () => {
  await setup;
  await using backends = await startTestBackends("b1");
  await using s = await launch({
    listen: [{ host: "127.0.0.1", port: 0, tls: { ...tlsOf("a"), minVersion: "1.3" } }],
    backends: [{ url: backends[0].url }],
  });
  const port = s.ports[0];
  const old = await sClient(port, { serverName: "a.example.com", version: "-tls1_2" });
  assert.equal(old.ok, false, old.output);
  assert.match(old.output, /alert protocol version|unsupported protocol|protocol version/i);
  const tls13 = await sClient(port, { serverName: "a.example.com", version: "-tls1_3" });
  assert.equal(tls13.version, "TLSv1.3", tls13.output);
  assert.equal((await curl(port, "a.example.com", "/", ["--tls-max", "1.2"])).code, 35);
  const ok = await curl(port, "a.example.com", "/", ["--tlsv1.3"]);
  assert.equal(ok.stdout, "b1", ok.stderr);
});

Deno.test("tls: behind a TCP proxy, the PROXY header before the handshake gives the client's address", async () => {
  await setup;
  await using backends = await startTestBackends("b1");
  await using s = await launch({
    listen: [{ host: "127.0.0.1", port: 0, tls: tlsOf("a", "b"), proxyProtocol: true }],
    backends: [{ url: backends[0].url }],
    trustedProxies: ["127.0.0.1"],
  });
  const tcp = await Deno.connect({ hostname: "127.0.0.1", port: s.ports[0] });
  await tcp.write(new TextEncoder().encode("PROXY TCP4 203.0.113.7 192.0.2.1 5555 443\r\n"));
  const conn = await Deno.startTls(tcp, { hostname: "b.example.com", caCerts: [ca.caCert] });
  try {
    await conn.write(
      new TextEncoder().encode(
        "GET /echo HTTP/1.1\r\nHost: b.example.com\r\nConnection: close\r\n\r\n",
      ),
    );
    let text = "";
    const buf = new Uint8Array(65536);
    for (;;) {
      const n = await conn.read(buf).catch(() => null);
      if (n === null) break;
      text += new TextDecoder().decode(buf.subarray(0, n));
    }
    assert.match(text, /^HTTP\/1\.1 200 /, text);
    const headers = new Map(JSON.parse(text.slice(text.indexOf("\r\n\r\n") + 4)).headers);
    assert.equal(headers.get("x-forwarded-for"), "203.0.113.7");
    assert.equal(headers.get("x-forwarded-proto"), "https");
  } finally {
    conn.close();
  }
  // Without the header, nothing is served (the ClientHello is not a PROXY header).
  const bare = await sClient(s.ports[0], { serverName: "b.example.com" });
  assert.equal(bare.ok, false);
});

Deno.test("tls: SIGHUP reloads a replaced certificate for new handshakes; an open connection keeps working; a broken file is rejected", async () => {
  await setup;
  await using backends = await startTestBackends("b1");
  await using site = await siteFiles("sluice_cert_reload_");
  const { certFile, keyFile } = site;
  await using s = await launch({
    listen: [
      { host: "127.0.0.1", port: 0 },
      { host: "127.0.0.1", port: 0, tls: site.tls },
    ],
    backends: [{ url: backends[0].url }],
  });
  const port = s.ports[1];
  const cn = async () => (await sClient(port, { serverName: "site.example.com" })).cn;
  assert.equal(await cn(), "site v1");
  const before = await tlsClient(port, "site.example.com");
  try {
    assert.match(await before.get("/"), /^HTTP\/1\.1 200[^]*b1$/);

    // Replace the pair (key first: a reload in between sees a mismatch and is rejected).
    await Deno.writeTextFile(keyFile, certs.v2.key);
    await Deno.writeTextFile(certFile, certs.v2.cert);
    assert.match(await hangup(s), /configuration reloaded/);
    // Once the swapped-out listener stopped accepting (after a short grace): each thread says so.
    await s.stderr.waitFor(/certificates reloaded/, Math.max(1, TEST_WORKERS));
    assert.equal(await cn(), "site v2", "the next handshake gets the new certificate");
    assert.match(await before.get("/"), /^HTTP\/1\.1 200[^]*b1$/, "opened before: still served");
    const after = await curl(port, "site.example.com", "/");
    assert.equal(after.stdout, "b1", after.stderr);

    // A broken certificate file: the reload fails as a whole, the certificate in use stays.
    await Deno.writeTextFile(certFile, "-----BEGIN CERTIFICATE-----\nnot base64\n");
    assert.match(await hangup(s), /configuration rejected \(SIGHUP\); keeping the previous one/);
    await s.stderr.waitFor(
      /invalid configuration: listen\[1\]\.tls\.certificates\[0\]\.cert: cannot parse the certificate/,
    );
    assert.equal(await cn(), "site v2");
    assert.match(await before.get("/"), /^HTTP\/1\.1 200[^]*b1$/);
    // A missing key file too, reported with its field.
    await Deno.writeTextFile(certFile, certs.v2.cert);
    await Deno.remove(keyFile);
    assert.match(await hangup(s), /configuration rejected/);
    await s.stderr.waitFor(
      /invalid configuration: listen\[1\]\.tls\.certificates\[0\]\.key: cannot read: no such file/,
    );
    assert.equal(await cn(), "site v2");
  } finally {
    before.close();
  }
  assert.equal(s.stderr.matching(/certificates reloaded/).length, Math.max(1, TEST_WORKERS));
});

Deno.test("tls: --watch reloads when a certificate file changes", async () => {
  await setup;
  await using backends = await startTestBackends("b1");
  await using site = await siteFiles("sluice_cert_watch_");
  const { dir, certFile, keyFile } = site;
  await using s = await launch({
    listen: [{ host: "127.0.0.1", port: 0, tls: site.tls }],
    backends: [{ url: backends[0].url }],
  }, { args: ["--watch"] });
  const cn = async () => (await sClient(s.ports[0], { serverName: "site.example.com" })).cn;
  assert.equal(await cn(), "site v1");
  // Replaced by renaming over, as cert managers do: key first, then the certificate.
  await Deno.writeTextFile(`${dir}/.key.tmp`, certs.v2.key);
  await Deno.writeTextFile(`${dir}/.cert.tmp`, certs.v2.cert);
  await Deno.rename(`${dir}/.key.tmp`, keyFile);
  await Deno.rename(`${dir}/.cert.tmp`, certFile);
  await s.stderr.waitFor(/certificates reloaded/, Math.max(1, TEST_WORKERS), PATIENCE);
  assert.equal(await cn(), "site v2");
});

Deno.test("tls: --check reports every certificate and CA problem at once, as field: reason lines", async () => {
  await setup;
  await using dir = await configDir({
    listen: [
      { port: 8080 },
      {
        port: 8443,
        tls: {
          certificates: [
            { cert: "missing.pem", key: certs.a.keyFile },
            { cert: certs.a.certFile, key: certs.b.keyFile },
          ],
        },
      },
    ],
    backends: [{ url: "https://127.0.0.1:9", tls: { ca: "no-ca.pem" } }],
    pools: {
      api: {
        backends: [{ url: "https://127.0.0.1:10" }],
        tls: { ca: certs.a.keyFile },
      },
    },
    routes: [{ path: "/api", pool: "api" }, { pool: "default" }],
  });
  const { code, stderr: text } = await checkConfig(dir.file);
  assert.equal(code, 1, text);
  assert.match(
    text,
    /listen\[1\]\.tls\.certificates\[0\]\.cert: cannot read: no such file \(.*missing\.pem\)/,
  );
  assert.match(text, /listen\[1\]\.tls\.certificates\[1\]\.key: does not match the certificate/);
  assert.match(text, /^backends\[0\]\.tls\.ca: cannot read: no such file/m);
  assert.match(text, /^pools\.api\.tls\.ca: not a PEM certificate/m);
});

Deno.test("tls: without --allow-ffi one clear warning about TCP_NODELAY; with it, none and no delayed-ACK stalls", async () => {
  await setup;
  // A backend whose response leaves in several writes (head, then chunks): what Nagle delays.
  const backend = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, () => {
    const body = new ReadableStream<Uint8Array>({
      async start(controller) {
        for (const part of ["one ", "two ", "three"]) {
          controller.enqueue(new TextEncoder().encode(part));
          await new Promise((r) => setTimeout(r, 1));
        }
        controller.close();
      },
    });
    return new Response(body);
  });
  try {
    const config = {
      listen: [
        { host: "127.0.0.1", port: 0, tls: tlsOf("a") },
        { host: "127.0.0.1", port: 0, tls: tlsOf("b") },
      ],
      backends: [{ url: `http://127.0.0.1:${backend.addr.port}` }],
    };
    const timing = async (s: LaunchedSluice) => {
      const client = await tlsClient(s.ports[0], "a.example.com");
      try {
        // Chunked responses: read until the last chunk.
        const times: number[] = [];
        const buf = new Uint8Array(65536);
        for (let i = 0; i < 15; i++) {
          const t0 = performance.now();
          await client.conn.write(
            new TextEncoder().encode("GET / HTTP/1.1\r\nHost: a.example.com\r\n\r\n"),
          );
          let text = "";
          while (!text.endsWith("0\r\n\r\n")) {
            const n = await client.conn.read(buf);
            if (n === null) throw new Error("closed");
            text += new TextDecoder().decode(buf.subarray(0, n));
          }
          times.push(performance.now() - t0);
        }
        times.sort((a, b) => a - b);
        return times[Math.floor(times.length / 2)];
      } finally {
        client.close();
      }
    };
    let slow: number;
    {
      await using s = await launch(config, { ffi: false });
      await s.stderr.waitFor(/TCP_NODELAY not set \(needs --allow-ffi\)/);
      slow = await timing(s);
      assert.equal(s.stderr.matching(/TCP_NODELAY/).length, 1, "warned once");
    }
    await using s = await launch(config);
    const fast = await timing(s);
    assert.equal(s.stderr.matching(/TCP_NODELAY/).length, 0);
    // Nagle plus the client's delayed ACK costs ~40 ms a response; without it, a few ms.
    assert.ok(slow >= 30, `median ${slow.toFixed(1)} ms without TCP_NODELAY`);
    assert.ok(fast < slow / 2, `median ${fast.toFixed(1)} ms with, ${slow.toFixed(1)} ms without`);
  } finally {
    await backend.shutdown();
  }
});

Deno.test("tls e2e: clean up the throwaway CA", async () => {
  await setup;
  await ca.cleanup();
});
