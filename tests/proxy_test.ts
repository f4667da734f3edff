/** The proxy path against real backends: distribution, transparency, bodies, keep-alive. */
import assert from "node:assert/strict";
import { gzipSync } from "node:zlib";
import { backendUrl, concat, startBackends, startTestBalancer, waitFor } from "./helpers.ts";
import { TEST_WORKERS } from "./process_helpers.ts";
import { bytes, RawClient, rawRequest, scriptedBackend, sha256 } from "./proxy_helpers.ts";

/** The port a demo backend names in its greeting. */
async function greetingPort(url: string): Promise<number> {
  const res = await fetch(url);
  const text = await res.text();
  assert.equal(res.status, 200, text);
  const match = /on port: (\d+)/.exec(text);
  assert.ok(match, `not a demo greeting: ${text}`);
  return Number(match[1]);
}

Deno.test("round robin sends requests to 3 backends in strict order a b c a b c", async () => {
  const backends = await startBackends(3);
  try {
    await using lb = await startTestBalancer({
      strategy: "round-robin",
      backends: backends.map((b) => ({ url: backendUrl(b) })),
    });
    const seen: number[] = [];
    for (let i = 0; i < 6; i++) seen.push(await greetingPort(lb.url));
    const [a, b, c] = backends.map((x) => x.port);
    assert.deepEqual(seen, [a, b, c, a, b, c]);
  } finally {
    await Promise.all(backends.map((b) => b.shutdown()));
  }
});

Deno.test("round robin alternates over the healthy backends only", async () => {
  const backends = await startBackends(3);
  try {
    await using lb = await startTestBalancer({
      strategy: "round-robin",
      backends: backends.map((b) => ({ url: backendUrl(b) })),
      // Probes a minute apart: the test drives the one probe that matters.
      health: { path: "/health", interval: "1m", unhealthyThreshold: 1 },
    });
    const middle = lb.balancer.pool.backends[1];
    await waitFor(() => middle.lastProbe !== undefined, "the start-up probe");
    await fetch(`${backendUrl(backends[1])}/health/off`).then((r) => r.text());
    await lb.balancer.health.check(middle);
    assert.equal(middle.state, "down");
    const seen: number[] = [];
    for (let i = 0; i < 6; i++) seen.push(await greetingPort(lb.url));
    const [a, , c] = backends.map((x) => x.port);
    assert.ok(!seen.includes(backends[1].port), `a down backend got traffic: ${seen}`);
    assert.equal(seen.filter((p) => p === a).length, 3, `uneven: ${seen}`);
    assert.equal(seen.filter((p) => p === c).length, 3, `uneven: ${seen}`);
    for (let i = 1; i < seen.length; i++) assert.notEqual(seen[i], seen[i - 1], `${seen}`);
  } finally {
    await Promise.all(backends.map((b) => b.shutdown()));
  }
});

Deno.test("a chunked request body reaches the backend intact", async () => {
  const [backend] = await startBackends(1);
  try {
    await using lb = await startTestBalancer({ backends: [{ url: backendUrl(backend) }] });
    // Hand-framed chunks, with an extension and odd sizes.
    const res = await rawRequest(
      lb.balancer.addr.port,
      "POST /echo HTTP/1.1\r\nHost: lb.test\r\nTransfer-Encoding: chunked\r\n" +
        "Connection: close\r\n\r\n5;ext=1\r\nhello\r\n1\r\n \r\nA\r\nworld, 10!\r\n0\r\n\r\n",
    );
    assert.equal(res.status, 200);
    const echo = JSON.parse(res.text());
    assert.equal(echo.body, "hello world, 10!");
    assert.equal(echo.bodyLength, 16);

    // A streamed upload of ~1 MB in uneven pieces (fetch sends it chunked).
    const pieces = Array.from(
      { length: 40 },
      (_, i) => String.fromCharCode(97 + i % 26).repeat(25_000 + i),
    );
    const expected = pieces.join("");
    const stream = ReadableStream.from(pieces.map((p) => new TextEncoder().encode(p)));
    const r2 = await fetch(`${lb.url}/echo`, { method: "POST", body: stream });
    const echo2 = await r2.json();
    assert.equal(echo2.bodyLength, expected.length);
    assert.equal(
      sha256(new TextEncoder().encode(echo2.body)),
      sha256(new TextEncoder().encode(expected)),
    );
  } finally {
    await backend.shutdown();
  }
});

Deno.test("HEAD, 204 and 304 pass through without a body and the connection stays usable", async () => {
  const page = "x".repeat(1234);
  const backend = scriptedBackend(({ method, target, head }) => {
    if (method === "HEAD") {
      return {
        reply: "HTTP/1.1 200 OK\r\nContent-Length: 1234\r\nContent-Type: text/plain\r\n\r\n",
      };
    }
    if (target === "/empty") return { reply: "HTTP/1.1 204 No Content\r\nX-Kind: empty\r\n\r\n" };
    if (target === "/page" && /if-none-match: "v1"/i.test(head)) {
      return {
        reply: 'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\nCache-Control: max-age=60\r\n\r\n',
      };
    }
    return {
      reply: `HTTP/1.1 200 OK\r\nETag: "v1"\r\nContent-Length: ${page.length}\r\n\r\n${page}`,
    };
  });
  try {
    await using lb = await startTestBalancer({ backends: [{ url: backend.url }] });
    using client = await RawClient.connect(lb.balancer.addr.port);
    const host = "Host: lb.test\r\n\r\n";

    await client.send(`HEAD /page HTTP/1.1\r\n${host}`);
    const head = await client.readResponse("HEAD");
    assert.equal(head.status, 200);
    assert.equal(head.header("content-length"), "1234", head.head);
    assert.equal(head.header("transfer-encoding"), null);

    await client.send(`GET /empty HTTP/1.1\r\n${host}`);
    const empty = await client.readResponse();
    assert.equal(empty.status, 204);
    assert.equal(empty.header("x-kind"), "empty");
    assert.equal(empty.header("content-length"), null, empty.head);
    assert.equal(empty.header("transfer-encoding"), null, empty.head);

    await client.send(`GET /page HTTP/1.1\r\nIf-None-Match: "v1"\r\n${host}`);
    const cached = await client.readResponse();
    assert.equal(cached.status, 304);
    assert.equal(cached.header("etag"), '"v1"');
    assert.equal(cached.header("cache-control"), "max-age=60");
    assert.equal(cached.header("transfer-encoding"), null, cached.head);

    // The same client connection still works: no stray body bytes were sent.
    assert.equal(client.leftover, 0);
    await client.send(`GET /page HTTP/1.1\r\n${host}`);
    const full = await client.readResponse();
    assert.equal(full.status, 200);
    assert.equal(full.text(), page);
    assert.equal(full.header("etag"), '"v1"');

    // And upstream, all four went over one kept-alive connection.
    const proxied = backend.proxied();
    assert.equal(proxied.length, 1, `upstream connections: ${proxied.length}`);
    assert.equal(proxied[0].requests.length, 4);
  } finally {
    await backend.close();
  }
});

Deno.test("path and query are forwarded byte for byte", async () => {
  const backend = scriptedBackend(({ target }) => ({
    reply: `HTTP/1.1 200 OK\r\nContent-Length: ${target.length}\r\n\r\n${target}`,
  }));
  const [demo] = await startBackends(1);
  try {
    await using lb = await startTestBalancer({ backends: [{ url: backend.url }] });
    const port = lb.balancer.addr.port;
    for (
      const target of ["/a%2Fb", "//double//slash", "/x?a=1&a=2", "/%7Euser?q=%20x", "/p;m?x=%2F&y"]
    ) {
      const res = await rawRequest(port, `GET ${target} HTTP/1.1\r\nHost: lb.test\r\n\r\n`);
      assert.equal(res.status, 200);
      assert.equal(res.text(), target);
      // Each worker thread has its own upstream connections: look at every one's latest.
      const lines = backend.proxied().map((c) => c.requests.at(-1)?.split("\r\n")[0]);
      assert.ok(lines.includes(`GET ${target} HTTP/1.1`), lines.join("\n"));
    }

    // The demo backend's /echo sees the same target.
    await using lb2 = await startTestBalancer({ backends: [{ url: backendUrl(demo) }] });
    for (const target of ["/echo?a=1&a=2", "/echo?q=%20x&u=%7Euser&s=a%2Fb"]) {
      const res = await rawRequest(
        lb2.balancer.addr.port,
        `GET ${target} HTTP/1.1\r\nHost: lb.test\r\nConnection: close\r\n\r\n`,
      );
      assert.equal(JSON.parse(res.text()).target, target);
    }
  } finally {
    await backend.close();
    await demo.shutdown();
  }
});

Deno.test("hop-by-hop headers are removed both ways and only X-Forwarded-* and X-Request-Id are added", async () => {
  const backend = scriptedBackend(() => ({
    reply: "HTTP/1.1 200 OK\r\nConnection: X-Internal, keep-alive\r\nX-Internal: secret\r\n" +
      "Keep-Alive: timeout=5\r\nX-Public: yes\r\nCache-Control: no-store\r\nContent-Length: 2\r\n\r\nok",
  }));
  try {
    await using lb = await startTestBalancer({ backends: [{ url: backend.url }] });
    const res = await rawRequest(
      lb.balancer.addr.port,
      "GET /hop HTTP/1.1\r\nHost: shop.example:8443\r\nConnection: X-Secret, keep-alive\r\n" +
        "X-Secret: s3cr3t\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nTrailer: X-Sum\r\n" +
        "Upgrade: example/1\r\nProxy-Connection: keep-alive\r\nX-Forwarded-For: 203.0.113.7\r\n" +
        "X-Custom: kept\r\nAccept: */*\r\n\r\n",
    );
    assert.equal(res.status, 200);
    assert.equal(res.text(), "ok");

    const head = backend.proxied()[0].requests[0];
    const fields = head.split("\r\n").slice(1).map((l) => {
      const colon = l.indexOf(":");
      return [l.slice(0, colon).toLowerCase(), l.slice(colon + 1).trim()];
    });
    const names = fields.map(([n]) => n).sort();
    assert.deepEqual(names, [
      "accept",
      "host",
      "x-custom",
      "x-forwarded-for",
      "x-forwarded-host",
      "x-forwarded-proto",
      "x-request-id",
    ], head);
    const get = (name: string) => fields.find(([n]) => n === name)?.[1];
    assert.equal(get("host"), "shop.example:8443");
    assert.equal(
      get("x-forwarded-for"),
      "127.0.0.1",
      "an untrusted client's X-Forwarded-For is replaced",
    );
    assert.equal(get("x-forwarded-proto"), "http");
    assert.equal(get("x-forwarded-host"), "shop.example:8443");
    assert.equal(get("x-custom"), "kept");
    assert.equal(get("x-request-id"), res.header("x-request-id"));

    // Towards the client: the backend's Connection-named header and Keep-Alive are gone.
    assert.equal(res.header("x-internal"), null, res.head);
    assert.equal(res.header("keep-alive"), null, res.head);
    assert.equal(res.header("x-public"), "yes");
    assert.equal(res.header("cache-control"), "no-store");
    const added = res.headers.map(([n]) => n).filter((n) =>
      !["x-public", "cache-control", "content-length"].includes(n)
    ).sort();
    // `date` is the HTTP server's own (RFC 9110 §6.6.1); connection only ever says keep-alive/close.
    assert.deepEqual(added.filter((n) => n !== "date" && n !== "connection"), ["x-request-id"]);
  } finally {
    await backend.close();
  }
});

Deno.test("a client's X-Request-Id is forwarded unchanged and echoed back", async () => {
  const backend = scriptedBackend(() => ({
    reply: "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
  }));
  try {
    await using lb = await startTestBalancer({ backends: [{ url: backend.url }] });
    const res = await fetch(lb.url, { headers: { "x-request-id": "trace-42" } });
    await res.body?.cancel();
    assert.equal(res.headers.get("x-request-id"), "trace-42");
    const head = backend.proxied()[0].requests[0];
    assert.equal(head.match(/x-request-id: .*/gi)?.join("|"), "x-request-id: trace-42");
  } finally {
    await backend.close();
  }
});

Deno.test("gzip-encoded responses pass through byte for byte and plain ones are not compressed", async () => {
  const text = "sluice ".repeat(5000);
  const gz = gzipSync(new TextEncoder().encode(text));
  const backend = scriptedBackend(({ target }) => {
    if (target === "/gz") {
      const head = bytes(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Encoding: gzip\r\n" +
          `Vary: Accept-Encoding\r\nContent-Length: ${gz.length}\r\n\r\n`,
      );
      return { reply: concat([head, gz]) };
    }
    return {
      reply:
        `HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: ${text.length}\r\n\r\n${text}`,
    };
  });
  try {
    await using lb = await startTestBalancer({ backends: [{ url: backend.url }] });
    const port = lb.balancer.addr.port;

    // Raw socket: the exact bytes on the wire.
    const res = await rawRequest(
      port,
      "GET /gz HTTP/1.1\r\nHost: lb.test\r\nAccept-Encoding: gzip\r\n\r\n",
    );
    assert.equal(res.status, 200);
    assert.equal(res.header("content-encoding"), "gzip");
    assert.equal(res.header("content-length"), String(gz.length));
    assert.equal(res.header("vary"), "Accept-Encoding");
    assert.equal(res.body.length, gz.length);
    assert.equal(sha256(res.body), sha256(gz));

    // fetch decodes gzip itself; its headers still show what was sent.
    const viaFetch = await fetch(`${lb.url}/gz`, { headers: { "accept-encoding": "gzip" } });
    assert.equal(viaFetch.headers.get("content-encoding"), "gzip");
    assert.equal(viaFetch.headers.get("content-length"), String(gz.length));
    assert.equal(await viaFetch.text(), text);

    // An uncompressed response stays uncompressed even when the client accepts gzip.
    const plain = await rawRequest(
      port,
      "GET /plain HTTP/1.1\r\nHost: lb.test\r\nAccept-Encoding: gzip, br\r\n\r\n",
    );
    assert.equal(plain.header("content-encoding"), null, "the balancer compressed a response");
    assert.equal(plain.header("content-length"), String(text.length));
    assert.equal(plain.text(), text);
  } finally {
    await backend.close();
  }
});

Deno.test("sequential requests reuse one upstream keep-alive connection", async () => {
  const backend = scriptedBackend(() => ({
    reply: "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
  }));
  try {
    await using lb = await startTestBalancer({ backends: [{ url: backend.url }] });
    for (let i = 0; i < 50; i++) {
      const res = await fetch(lb.url);
      assert.equal(await res.text(), "hello");
    }
    const proxied = backend.proxied();
    assert.ok(proxied.length <= 2, `50 sequential requests opened ${proxied.length} connections`);
    assert.equal(proxied.reduce((n, c) => n + c.requests.length, 0), 50);
  } finally {
    await backend.close();
  }
});

Deno.test("timeouts.idle: an upstream keep-alive connection unused that long is closed, not before", async () => {
  const backend = scriptedBackend(() => ({
    reply: "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
  }));
  try {
    await using lb = await startTestBalancer({
      backends: [{ url: backend.url }],
      timeouts: { idle: "1s" },
    });
    const res = await fetch(lb.url);
    assert.equal(await res.text(), "hello");
    const done = Date.now();
    const [conn] = backend.proxied();
    await waitFor(() => conn.closedByPeer, "the idle upstream connection to be closed", 10_000);
    const idle = Date.now() - done;
    // Swept on a timer of half the timeout; the connection went idle a little before `done`.
    assert.ok(idle >= 700, `closed after ${idle} ms idle, timeouts.idle 1s`);
    // A connection in use is not: requests 50 ms apart keep one open (one per worker thread)
    // well past the timeout.
    const before = backend.proxied().length;
    for (let i = 0; i < 40; i++) {
      assert.equal(await (await fetch(lb.url)).text(), "hello");
      await new Promise((r) => setTimeout(r, 50));
    }
    const opened = backend.proxied().length - before;
    assert.ok(opened <= TEST_WORKERS, `${opened} connections for 40 requests 50 ms apart`);
  } finally {
    await backend.close();
  }
});

Deno.test("a response that arrives whole is relayed from the backend's buffer: concurrent clients each get their own bytes, and a 503 dropped for a retry frees its connection", async () => {
  // Each body names its request and differs in length, so bytes overwritten by the next
  // response on a reused connection would show.
  const body = (target: string) => `${target}:` + "x".repeat(target.length * 7 % 300);
  const good = scriptedBackend(({ target }) => ({
    reply: `HTTP/1.1 200 OK\r\nContent-Length: ${body(target).length}\r\n` +
      `x-delay: ${Number(target.split("/")[2]) % 4 * 3}\r\n\r\n${body(target)}`,
  }));
  const failing = scriptedBackend(() => ({
    reply: "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy",
  }));
  try {
    await using lb = await startTestBalancer({
      backends: [{ url: failing.url }, { url: good.url }],
      retryOn: [503],
      retryBudget: { percent: 100 },
      outlier: { consecutiveFailures: 0 }, // the 503s are wanted, not an ejection
    });
    for (let round = 0; round < 5; round++) {
      const targets = Array.from({ length: 40 }, (_, i) => `/r${round}/${i}`);
      const texts = await Promise.all(targets.map(async (t) => {
        const res = await fetch(lb.url + t);
        assert.equal(res.status, 200);
        return await res.text();
      }));
      assert.deepEqual(texts, targets.map(body));
    }
    // An onResponse hook that waits (0-9 ms, as the backend says) holds the reply while other
    // responses arrive on the same connections: the lent bytes must stay the client's until
    // the hook is done and the response is written.
    const hooks = await Deno.makeTempFile({ suffix: ".ts" });
    await Deno.writeTextFile(
      hooks,
      "export default { onResponse: (res) => new Promise((r) => " +
        "setTimeout(r, Number(res.headers.get('x-delay')))) };\n",
    );
    try {
      await using hooked = await startTestBalancer({ backends: [{ url: good.url }], hooks });
      // Ten clients, twenty requests each: new requests keep arriving while others wait.
      await Promise.all(Array.from({ length: 10 }, async (_, c) => {
        for (let i = 0; i < 20; i++) {
          const target = `/hooked/${c}/${i}`;
          assert.equal(await (await fetch(hooked.url + target)).text(), body(target));
        }
      }));
    } finally {
      await Deno.remove(hooks);
    }
    // About half the requests met the 503 first; its connections went back to the pool (held
    // ones would need a new connection for every 503).
    const proxied = failing.proxied();
    const answered = proxied.reduce((n, c) => n + c.requests.length, 0);
    assert.ok(answered >= 50, `only ${answered} requests reached the failing backend`);
    assert.ok(proxied.length <= 40, `${answered} 503s took ${proxied.length} connections`);
  } finally {
    await good.close();
    await failing.close();
  }
});

Deno.test("demo backend: sequential requests reuse few upstream connections", async () => {
  const accepted: number[] = [];
  // Count accepted TCP connections in front of the demo backend with a relay.
  const [demo] = await startBackends(1);
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const relays = new Set<Promise<void>>();
  const sockets = new Set<Deno.Conn>();
  (async () => {
    try {
      for await (const conn of listener) {
        accepted.push(Date.now());
        const up = await Deno.connect({ hostname: "127.0.0.1", port: demo.port });
        sockets.add(conn).add(up);
        const relay = Promise.allSettled([
          conn.readable.pipeTo(up.writable),
          up.readable.pipeTo(conn.writable),
        ]).then(() => {
          sockets.delete(conn);
          sockets.delete(up);
          relays.delete(relay);
        });
        relays.add(relay);
      }
    } catch { /* closed */ }
  })();
  try {
    const port = (listener.addr as Deno.NetAddr).port;
    await using lb = await startTestBalancer({
      backends: [{ url: `http://127.0.0.1:${port}` }],
      health: { path: "/health" },
    });
    await waitFor(() => lb.balancer.pool.backends[0].lastProbe !== undefined, "first probe");
    const before = accepted.length;
    for (let i = 0; i < 40; i++) {
      const res = await fetch(lb.url);
      assert.equal(res.status, 200);
      await res.text();
    }
    assert.ok(accepted.length - before <= 2, `40 requests opened ${accepted.length - before}`);
  } finally {
    listener.close();
    for (const s of sockets) {
      try {
        s.close();
      } catch { /* closed */ }
    }
    await Promise.all([...relays]);
    await demo.shutdown();
  }
});

Deno.test("a backend that closes every connection after one response still serves every GET", async () => {
  const backend = scriptedBackend(() => ({
    reply: "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    then: "close",
  }));
  try {
    await using lb = await startTestBalancer({ backends: [{ url: backend.url }], retries: 0 });
    const statuses: number[] = [];
    for (let i = 0; i < 60; i++) {
      const res = await fetch(lb.url);
      statuses.push(res.status);
      if (res.status === 200) assert.equal(await res.text(), "ok");
      else await res.body?.cancel();
    }
    assert.deepEqual(statuses.filter((s) => s !== 200), [], `failures: ${statuses}`);
    assert.ok(backend.proxied().length >= 60);
  } finally {
    await backend.close();
  }
});
