/**
 * The client-facing HTTP/1.1 server, black-box over raw sockets: what it rejects (and that it
 * keeps serving afterwards), keep-alive, pipelining, HTTP/1.0, 100-continue, request and
 * response framing, transparency of heads, and client-side timeouts.
 */
import assert from "node:assert/strict";
import {
  backendUrl,
  type DemoBackend,
  startBackends,
  startTestBalancer,
  type TestBalancer,
  waitFor,
} from "./helpers.ts";
import {
  RawClient,
  rawRequest,
  type RawResponse,
  type Script,
  scriptedBackend,
  type ScriptedRequest,
  untilClosed,
  within,
} from "./proxy_helpers.ts";

/** Upper bound for any single wait (a busy 2-core machine); a hang fails instead of blocking. */
const WAIT = 15_000;
const H = "Host: lb.test\r\n";

interface Demo {
  port: number;
  backend: DemoBackend;
  lb: TestBalancer;
}

/** Runs `fn` against a balancer in front of one demo backend; tears both down. */
async function withDemo(fn: (d: Demo) => Promise<void>, config: Record<string, unknown> = {}) {
  const [backend] = await startBackends(1);
  try {
    await using lb = await startTestBalancer({
      backends: [{ url: backendUrl(backend) }],
      ...config,
    });
    await fn({ port: lb.balancer.addr.port, backend, lb });
  } finally {
    await backend.shutdown();
  }
}

/** Runs `fn` against a balancer in front of a scripted raw backend; tears both down. */
async function withScripted(
  script: (req: ScriptedRequest) => Script,
  fn: (port: number, backend: ReturnType<typeof scriptedBackend>) => Promise<void>,
  config: Record<string, unknown> = {},
) {
  const backend = scriptedBackend(script);
  try {
    await using lb = await startTestBalancer({ backends: [{ url: backend.url }], ...config });
    await fn(lb.balancer.addr.port, backend);
  } finally {
    await backend.close();
  }
}

/** Reads exactly one response off `client` (framed by Content-Length, chunked or close). */
function read(client: RawClient, what: string, method?: string): Promise<RawResponse> {
  return within(client.readResponse(method), WAIT, what);
}

/** Asserts that a normal request on a new connection is answered 200. */
async function assertServes(port: number) {
  const res = await within(
    rawRequest(port, `GET /echo HTTP/1.1\r\n${H}Connection: close\r\n\r\n`),
    WAIT,
    "a normal request after the bad one",
  );
  assert.equal(res.status, 200, `the balancer stopped serving: ${res.head}`);
}

/** The demo backend's /echo answer. */
function echo(res: RawResponse): { method: string; target: string; body: string } {
  assert.equal(res.status, 200, res.head);
  return JSON.parse(res.text());
}

// ---------------------------------------------------------------------------------------------
// Rejected requests: status, Connection: close, the socket closed, nothing forwarded, and the
// balancer still serves the next client.

/** A request: its request line, header lines (each ending CRLF), the blank line and `body`. */
const req = (line: string, fields: string, body = "") => `${line}\r\n${fields}\r\n${body}`;
const get = (fields: string) => req("GET / HTTP/1.1", H + fields);
const post = (fields: string, body = "") => req("POST /echo HTTP/1.1", H + fields, body);
const TE = "Transfer-Encoding:";
const rejected: [status: number, name: string, request: string][] = [
  [400, "a one-word request line", "BAD\r\n\r\n"],
  [400, "a request line without a version", req("GET /", H)],
  [400, "a request line with a 4th part", req("GET / HTTP/1.1 extra", H)],
  [400, "a header line without a colon", get("NoColon\r\n")],
  [400, "whitespace before the colon (Host : x)", req("GET / HTTP/1.1", "Host : lb.test\r\n")],
  [400, "whitespace before the colon (X-Test : 1)", get("X-Test : 1\r\n")],
  [400, "obs-fold with a space", get("X-Test: 1\r\n more\r\n")],
  [400, "obs-fold with a tab", get("X-Test: 1\r\n\tmore\r\n")],
  [400, "bare LF line ends", "GET / HTTP/1.1\nHost: lb.test\n\n"],
  [400, "one bare LF in a CRLF head", "GET / HTTP/1.1\r\nHost: lb.test\nX-Test: 1\r\n\r\n"],
  [400, "a control character in a header value", get("X-Test: a\x01b\r\n")],
  [400, "a control character in the target", req("GET /a\x01b HTTP/1.1", H)],
  [400, "HTTP/1.1 without Host", req("GET / HTTP/1.1", "Accept: */*\r\n")],
  [400, "two Host fields, same value", get(H)],
  [400, "two Host fields, different values", get("Host: b.test\r\n")],
  [400, "Content-Length with chunked", post(`Content-Length: 5\r\n${TE} chunked\r\n`, "0\r\n\r\n")],
  [400, "two different Content-Length values", post("Content-Length: 5\r\nContent-Length: 6\r\n")],
  [400, "Content-Length: 12abc", post("Content-Length: 12abc\r\n", "hello")],
  [400, "Content-Length: -1", post("Content-Length: -1\r\n", "hello")],
  [400, "Content-Length: +5", post("Content-Length: +5\r\n", "hello")],
  [400, "chunked on HTTP/1.0", req("POST /echo HTTP/1.0", `${H}${TE} chunked\r\n`, "0\r\n\r\n")],
  // Chunked not the final coding: the body length is unknown, and RFC 9112 §6.3 says MUST 400.
  [400, "Transfer-Encoding: gzip", post(`${TE} gzip\r\n`, "hello")],
  [431, "a 70 000-byte header (head over 64 KiB)", get(`X-Big: ${"a".repeat(70_000)}\r\n`)],
  [501, "Transfer-Encoding: gzip, chunked", post(`${TE} gzip, chunked\r\n`, "0\r\n\r\n")],
  [505, "version HTTP/2.0", req("GET / HTTP/2.0", H)],
  [505, "version HTTP/3.0", req("GET / HTTP/3.0", H)],
  [414, "a 9 KiB request target", req(`GET /${"a".repeat(9 * 1024)} HTTP/1.1`, H)],
  [400, "an invalid Host (user@host)", req("GET / HTTP/1.1", "Host: user@lb.test\r\n")],
];

for (const [status, name, request] of rejected) {
  Deno.test(`${status} for ${name}${status === 505 ? "" : ", then close"}; still serving`, async () => {
    await withDemo(async ({ port, backend, lb }) => {
      const [pooled] = lb.balancer.pool.backends;
      await waitFor(() => pooled.lastProbe !== undefined, "the start-up probe", WAIT);
      const before = backend.requests;
      {
        using client = await RawClient.connect(port);
        // The balancer may answer and close before it read all of a large head.
        await client.send(request).catch(() => {});
        const res = await read(client, `the ${status} response`);
        assert.equal(res.status, status, res.head);
        if (status !== 505) {
          assert.match(res.header("connection") ?? "", /\bclose\b/i, res.head);
          assert.equal(client.leftover, 0, "bytes after the error response");
          assert.equal(await untilClosed(client), "", "bytes after the error response");
        }
      }
      assert.equal(backend.requests, before, "the rejected request reached the backend");
      await assertServes(port);
    });
  });
}

// ---------------------------------------------------------------------------------------------
// Accepted edge cases.

const sixtyKiB = (() => {
  const start = `GET /echo HTTP/1.1\r\n${H}Connection: close\r\nX-Big: `;
  return start + "b".repeat(60 * 1024 - start.length - 4) + "\r\n\r\n";
})();
const accepted: { name: string; request: string }[] = [
  { name: "HTTP/1.1", request: `GET /echo HTTP/1.1\r\n${H}Connection: close\r\n\r\n` },
  { name: "HTTP/1.0", request: `GET /echo HTTP/1.0\r\n${H}\r\n` },
  { name: "a request head of exactly 60 KiB", request: sixtyKiB },
  { name: "HTTP/1.2 (answered as 1.1)", request: `GET /echo HTTP/1.2\r\n${H}\r\n` },
  { name: "a target with a #fragment", request: `GET /echo#top HTTP/1.1\r\n${H}\r\n` },
];

for (const { name, request } of accepted) {
  Deno.test(`200 for ${name}`, async () => {
    await withDemo(async ({ port }) => {
      const res = await within(rawRequest(port, request), WAIT, name);
      assert.equal(echo(res).target, "/echo");
    });
  });
}

// ---------------------------------------------------------------------------------------------
// Connection management.

Deno.test("keep-alive: three requests in turn on one socket, then Connection: close closes it", async () => {
  await withDemo(async ({ port }) => {
    using client = await RawClient.connect(port);
    for (const n of [1, 2, 3]) {
      await client.send(`GET /echo?n=${n} HTTP/1.1\r\n${H}\r\n`);
      const res = await read(client, `response ${n}`);
      assert.equal(echo(res).target, `/echo?n=${n}`);
      assert.doesNotMatch(res.header("connection") ?? "", /close/i, res.head);
    }
    await client.send(`GET /echo?n=4 HTTP/1.1\r\n${H}Connection: close\r\n\r\n`);
    const last = await read(client, "the response to Connection: close");
    assert.equal(echo(last).target, "/echo?n=4");
    assert.match(last.header("connection") ?? "", /\bclose\b/i, last.head);
    assert.equal(await untilClosed(client), "");
  });
});

Deno.test("pipelining: three GETs in one write get three responses in order", async () => {
  await withDemo(async ({ port }) => {
    using client = await RawClient.connect(port);
    await client.send([1, 2, 3].map((n) => `GET /echo?n=${n} HTTP/1.1\r\n${H}\r\n`).join(""));
    for (const n of [1, 2, 3]) {
      assert.equal(echo(await read(client, `pipelined response ${n}`)).target, `/echo?n=${n}`);
    }
  });
});

Deno.test("HTTP/1.0: closed after the response, unless Connection: keep-alive", async () => {
  await withDemo(async ({ port }) => {
    {
      using client = await RawClient.connect(port);
      await client.send(`GET /echo HTTP/1.0\r\n${H}\r\n`);
      assert.equal(echo(await read(client, "the HTTP/1.0 response")).target, "/echo");
      assert.equal(await untilClosed(client), "");
    }
    using client = await RawClient.connect(port);
    for (const n of [1, 2]) {
      await client.send(`GET /echo?n=${n} HTTP/1.0\r\n${H}Connection: keep-alive\r\n\r\n`);
      const res = await read(client, `HTTP/1.0 keep-alive response ${n}`);
      assert.equal(echo(res).target, `/echo?n=${n}`);
      assert.match(res.header("connection") ?? "", /keep-alive/i, res.head);
    }
  });
});

Deno.test("Expect: 100-continue: 100 Continue before the body, then the echoed body", async () => {
  await withDemo(async ({ port }) => {
    using client = await RawClient.connect(port);
    const body = "hello, continued";
    await client.send(post(`Content-Length: ${body.length}\r\nExpect: 100-continue\r\n`));
    const interim = await read(client, "100 Continue while the body is held back");
    assert.equal(interim.status, 100, interim.head);
    await client.send(body);
    let res = await read(client, "the final response");
    while (res.status < 200) res = await read(client, "the final response");
    assert.equal(echo(res).body, body);
  });
});

// ---------------------------------------------------------------------------------------------
// Request bodies.

Deno.test("chunked request bodies (extensions, trailers) reach the backend whole, keep-alive", async () => {
  await withDemo(async ({ port }) => {
    using client = await RawClient.connect(port);
    const te = "Transfer-Encoding: chunked\r\n";
    await client.send(post(te, "5;ext=1\r\nhello\r\n1\r\n \r\nA;a=b;c\r\nworld, 10!\r\n0\r\n\r\n"));
    assert.equal(echo(await read(client, "chunked with extensions")).body, "hello world, 10!");
    await client.send(post(te, "3\r\nabc\r\n0\r\nX-Trailer: 1\r\n\r\n"));
    assert.equal(echo(await read(client, "chunked with a trailer")).body, "abc");
    await client.send(`GET /echo?after HTTP/1.1\r\n${H}\r\n`);
    assert.equal(echo(await read(client, "a GET after them")).target, "/echo?after");
  });
});

Deno.test("an invalid chunk size fails the request and closes the connection; still serving", async () => {
  await withDemo(async ({ port, lb }) => {
    for (const method of ["POST", "PUT"]) {
      using client = await RawClient.connect(port);
      // A good chunk first, so the upload is already under way upstream when the bad one comes.
      await client.send(
        `${method} /echo HTTP/1.1\r\n${H}Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n`,
      );
      await client.send("zz\r\nhello\r\n0\r\n\r\n");
      const got = await untilClosed(client);
      // The client is told why: a 400 with Connection: close, then the close.
      assert.match(got, /^HTTP\/1\.1 400 /, `a bad body was not answered 400: ${got}`);
      assert.match(got, /\r\nconnection: close\r\n/i, got);
    }
    // The client's fault, not the backend's: no failure counted against it, no retry.
    const backend = lb.balancer.pool.backends[0];
    await waitFor(() => backend.inflight === 0, "the failed uploads to be settled");
    assert.equal(backend.consecutiveFailures, 0);
    assert.equal(backend.state, "up");
    assert.deepEqual(lb.logs.filter((l) => /upstream .* failed|retry/.test(l)), []);
    await assertServes(port);
  }, { outlier: { consecutiveFailures: 1, maxEjectionPercent: 100 } });
});

// ---------------------------------------------------------------------------------------------
// Response framing.

const framing = ({ method, target }: ScriptedRequest): Script => {
  if (method === "HEAD") return { reply: "HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n" };
  switch (target) {
    case "/cl":
      return { reply: "HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello world" };
    case "/chunked":
      return {
        reply:
          "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
      };
    case "/close": // no length, no chunking: the body ends when the backend closes
      return {
        reply: "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nhello",
        more: (write) => write(" world"),
        then: "close",
      };
    case "/204":
      return { reply: "HTTP/1.1 204 No Content\r\nX-Kind: empty\r\n\r\n" };
    case "/304":
      return { reply: 'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\n\r\n' };
  }
  return { reply: "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n" };
};

Deno.test("HTTP/1.1 client: Content-Length kept, chunked stays chunked, close-delimited becomes chunked", async () => {
  await withScripted(framing, async (port) => {
    using client = await RawClient.connect(port);
    const get = async (target: string) => {
      await client.send(`GET ${target} HTTP/1.1\r\n${H}\r\n`);
      const res = await read(client, target);
      assert.equal(res.status, 200, res.head);
      assert.equal(res.text(), "hello world", target);
      return res;
    };
    const cl = await get("/cl");
    assert.equal(cl.header("content-length"), "11", cl.head);
    assert.equal(cl.header("transfer-encoding"), null, cl.head);
    for (const target of ["/chunked", "/close"]) {
      const res = await get(target);
      assert.equal(res.header("transfer-encoding")?.toLowerCase(), "chunked", res.head);
      assert.equal(res.header("content-length"), null, res.head);
    }
    await get("/cl"); // the socket is still usable after all three
  });
});

Deno.test("HTTP/1.0 client: a close-delimited backend response is delimited by close", async () => {
  await withScripted(framing, async (port) => {
    using client = await RawClient.connect(port);
    await client.send(`GET /close HTTP/1.0\r\n${H}\r\n`);
    const res = await read(client, "the close-delimited response");
    assert.equal(res.status, 200, res.head);
    assert.equal(res.header("transfer-encoding"), null, res.head);
    assert.equal(res.header("content-length"), null, res.head);
    assert.equal(res.text(), "hello world"); // read up to the balancer's close
  });
});

Deno.test("HEAD, 204 and 304 carry no body and the socket stays usable", async () => {
  await withScripted(framing, async (port) => {
    using client = await RawClient.connect(port);
    await client.send(`HEAD /page HTTP/1.1\r\n${H}\r\n`);
    const head = await read(client, "HEAD", "HEAD");
    assert.equal(head.status, 200, head.head);
    assert.equal(head.header("content-length"), "1234", head.head);
    for (const [target, status] of [["/204", 204], ["/304", 304]] as const) {
      await client.send(`GET ${target} HTTP/1.1\r\n${H}If-None-Match: "v1"\r\n\r\n`);
      const res = await read(client, target);
      assert.equal(res.status, status, res.head);
      assert.equal(res.header("transfer-encoding"), null, res.head);
    }
    assert.equal(client.leftover, 0, "stray body bytes");
    await client.send(`GET /cl HTTP/1.1\r\n${H}\r\n`);
    const next = await read(client, "a GET after them");
    assert.equal(next.status, 200, next.head);
    assert.equal(next.text(), "hello world");
  });
});

// ---------------------------------------------------------------------------------------------
// Transparency.

Deno.test("the backend's reason phrase reaches the client", async () => {
  await withScripted(({ target }) => ({
    reply: target === "/ok"
      ? "HTTP/1.1 200 Fine Thanks\r\nContent-Length: 2\r\n\r\nok"
      : "HTTP/1.1 404 No Such Widget\r\nContent-Length: 0\r\n\r\n",
  }), async (port) => {
    for (const [target, line] of [["/ok", "200 Fine Thanks"], ["/x", "404 No Such Widget"]]) {
      const res = await within(
        rawRequest(port, `GET ${target} HTTP/1.1\r\n${H}\r\n`),
        WAIT,
        target,
      );
      assert.equal(res.head.split("\r\n")[0], `HTTP/1.1 ${line}`);
    }
  });
});

Deno.test("Date: a backend's is kept as sent; an undated response and the balancer's own get one", async () => {
  const fixed = "Tue, 01 Jan 2030 00:00:00 GMT";
  await withScripted(({ target }) => ({
    reply: target === "/dated"
      ? `HTTP/1.1 200 OK\r\nDATE: ${fixed}\r\nContent-Length: 0\r\n\r\n`
      : "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
  }), async (port) => {
    const get = (target: string, extra = "") =>
      within(rawRequest(port, `GET ${target} HTTP/1.1\r\n${H}${extra}\r\n`), WAIT, target);
    const dates = (head: string) => head.split("\r\n").filter((l) => /^date:/i.test(l));
    assert.deepEqual(dates((await get("/dated")).head), [`DATE: ${fixed}`]);
    for (const head of [(await get("/undated")).head, (await get("/", "Host: again\r\n")).head]) {
      const [line] = dates(head);
      assert.equal(dates(head).length, 1, head);
      const date = Date.parse(line.slice(line.indexOf(":") + 1));
      assert.ok(Math.abs(Date.now() - date) < 60_000, line);
    }
  });
});

Deno.test("request header names keep their case and order; repeated fields stay separate lines", async () => {
  await withScripted(() => ({ reply: "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n" }), async (
    port,
    backend,
  ) => {
    const sent = [
      ["Host", "lb.test"],
      ["User-Agent", "raw-test/1"],
      ["X-Dup", "a"],
      ["accept", "*/*"],
      ["X-Dup", "b"],
      ["X-CamelCase-Name", "v"],
    ];
    const request = `GET /h HTTP/1.1\r\n${sent.map(([n, v]) => `${n}: ${v}\r\n`).join("")}\r\n`;
    assert.equal((await within(rawRequest(port, request), WAIT, "the request")).status, 200);
    const head = backend.proxied()[0].requests[0];
    const fields = head.split("\r\n").slice(1).map((line) => {
      const colon = line.indexOf(":");
      return [line.slice(0, colon), line.slice(colon + 1).trim()];
    }).filter(([name]) => !/^(x-forwarded-(for|proto|host)|x-request-id)$/i.test(name));
    assert.deepEqual(fields, sent, head);
  });
});

Deno.test("response header names keep their case and order", async () => {
  await withScripted(() => ({
    reply: "HTTP/1.1 200 OK\r\nX-Mixed-Case: 1\r\nx-lower: 2\r\nX-UPPER: 3\r\n" +
      "Content-Length: 2\r\n\r\nok",
  }), async (port) => {
    const res = await within(rawRequest(port, `GET / HTTP/1.1\r\n${H}\r\n`), WAIT, "the response");
    const lines = res.head.split("\r\n").filter((l) => /^x-(mixed|lower|upper)/i.test(l));
    assert.deepEqual(lines, ["X-Mixed-Case: 1", "x-lower: 2", "X-UPPER: 3"], res.head);
  });
});

// ---------------------------------------------------------------------------------------------
// Timeouts and hang-ups.

/**
 * Against a balancer with `timeout` set to 1s: after `send`, the client gets 408 and the
 * connection is closed about a second later; then the balancer still serves.
 */
async function timesOut408(
  timeout: "clientHeader" | "client",
  send: (client: RawClient) => Promise<unknown>,
): Promise<void> {
  await withDemo(async ({ port }) => {
    {
      using client = await RawClient.connect(port);
      const start = Date.now();
      const sending = send(client);
      const res = await read(client, `408 after ${timeout}`);
      assert.equal(res.status, 408, res.head);
      await untilClosed(client);
      const elapsed = Date.now() - start;
      assert.ok(elapsed >= 900 && elapsed < 8_000, `closed after ${elapsed} ms, timeout 1s`);
      await sending;
    }
    await assertServes(port);
  }, { timeouts: { [timeout]: "1s" } });
}

Deno.test("timeouts.clientHeader: an unfinished head gets 408 and the connection is closed", () =>
  timesOut408("clientHeader", (client) => client.send(`GET / HTTP/1.1\r\n${H}`)));

Deno.test("timeouts.clientIdle: an idle keep-alive connection is closed without a response", async () => {
  await withDemo(async ({ port }) => {
    using client = await RawClient.connect(port);
    await client.send(`GET /echo HTTP/1.1\r\n${H}\r\n`);
    echo(await read(client, "the first response"));
    const start = Date.now();
    assert.equal(await untilClosed(client, { what: "the idle connection to be closed" }), "");
    const elapsed = Date.now() - start;
    assert.ok(elapsed >= 700 && elapsed < 8_000, `closed after ${elapsed} ms, timeout 1s`);
  }, { timeouts: { clientIdle: "1s" } });
});

Deno.test("timeouts.clientIdle does not cut a request whose response takes longer", async () => {
  const [backend] = await startBackends(1, { delay: 1_200 });
  try {
    await using lb = await startTestBalancer({
      backends: [{ url: backendUrl(backend) }],
      health: { interval: "10s", timeout: "5s" },
      timeouts: { clientIdle: "300ms" },
    });
    using client = await RawClient.connect(lb.balancer.addr.port);
    await client.send(`GET /echo HTTP/1.1\r\n${H}\r\n`);
    echo(await read(client, "the slow response"));
    // Still open for the next request on the same connection.
    await client.send(`GET /echo HTTP/1.1\r\n${H}\r\n`);
    echo(await read(client, "the second response"));
  } finally {
    await backend.shutdown();
  }
});

Deno.test("timeouts.clientHeader bounds the whole head: a byte at a time does not extend it", () =>
  timesOut408("clientHeader", async (client) => {
    for (
      const byte of new TextEncoder().encode(`GET / HTTP/1.1\r\n${H}X-Slow: ${"a".repeat(200)}`)
    ) {
      if (!(await client.conn.write(Uint8Array.of(byte)).then(() => true, () => false))) return;
      await new Promise((r) => setTimeout(r, 50));
    }
  }));

Deno.test("slowloris: 200 trickling connections do not delay other clients and are all cut off", async () => {
  await withDemo(async ({ port, lb }) => {
    const slow = await Promise.all(
      Array.from({ length: 200 }, () => Deno.connect({ hostname: "127.0.0.1", port })),
    );
    try {
      const partial = new TextEncoder().encode(`GET / HTTP/1.1\r\n${H}X-a: `);
      await Promise.all(slow.map((c) => c.write(partial)));
      // Meanwhile ordinary requests are answered at once.
      for (let i = 0; i < 20; i++) {
        const started = Date.now();
        await assertServes(port);
        assert.ok(Date.now() - started < 1_000, `a request took ${Date.now() - started} ms`);
      }
      // Every trickling connection ends (408, then closed) once clientHeader has passed.
      await within(
        Promise.all(slow.map(async (c) => {
          const buf = new Uint8Array(4096);
          while ((await c.read(buf).catch(() => null)) !== null) { /* the 408 */ }
        })),
        WAIT,
        "the slow connections to be closed",
      );
      await waitFor(() => lb.balancer.stats.clientConnections() === 0, "no connections left");
    } finally {
      for (const c of slow) {
        try {
          c.close();
        } catch { /* closed */ }
      }
    }
  }, { timeouts: { clientHeader: "2s" } });
});

Deno.test("timeouts.client: a stalled request body gets 408 and the connection is closed", () =>
  timesOut408("client", (client) => client.send(post("Content-Length: 10\r\n", "12"))));

const BLOCK = "x".repeat(65536);

/** A backend whose `/big` is `blocks` × 64 KiB, written as the balancer takes it; anything else is "ok". */
const bigBody = (blocks: number) => ({ target }: ScriptedRequest): Script =>
  target === "/big"
    ? {
      reply: `HTTP/1.1 200 OK\r\nContent-Length: ${blocks * BLOCK.length}\r\n\r\n`,
      more: async (write) => {
        for (let i = 0; i < blocks; i++) await write(BLOCK);
      },
    }
    : { reply: "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" };

Deno.test("timeouts.client: a client that stops reading a response is cut off", async () => {
  const blocks = 1024; // 64 MiB: more than the socket buffers between us can hold
  await withScripted(bigBody(blocks), async (port) => {
    using client = await RawClient.connect(port);
    await client.send(`GET /big HTTP/1.1\r\n${H}\r\n`);
    // Read nothing for a while: the balancer's writes stall, and after 1s it gives up.
    await new Promise((r) => setTimeout(r, 3_000));
    const got = (await untilClosed(client, { what: "the stalled connection to be closed" })).length;
    assert.ok(got < blocks * BLOCK.length, `the whole body arrived (${got} bytes)`);
    const res = await within(rawRequest(port, `GET / HTTP/1.1\r\n${H}\r\n`), WAIT, "next");
    assert.equal(res.status, 200);
  }, { timeouts: { client: "1s" } });
});

Deno.test("a client that hangs up mid-response does not disturb the balancer", async () => {
  await withScripted(bigBody(256), async (port) => { // 16 MiB, far more than socket buffers hold
    for (let round = 1; round <= 3; round++) {
      {
        using client = await RawClient.connect(port);
        await client.send(`GET /big HTTP/1.1\r\n${H}\r\n`);
        const buf = new Uint8Array(65536);
        let got = 0;
        await within(
          (async () => {
            while (got < 256 * 1024) {
              const n = await client.conn.read(buf);
              if (n === null) throw new Error(`closed after ${got} bytes`);
              got += n;
            }
          })(),
          WAIT,
          "the start of the big response",
        );
      } // hang up here
      const res = await within(
        rawRequest(port, `GET /small HTTP/1.1\r\n${H}\r\n`),
        WAIT,
        `a request after hang-up ${round}`,
      );
      assert.equal(res.status, 200, res.head);
      assert.equal(res.text(), "ok");
    }
  });
});
