/**
 * HTTP/1.1 conformance on the client side (RFC 9112, RFC 9110), measured from outside over raw
 * sockets: what the client gets, and what a backend behind the balancer receives (read by a
 * recording backend with its own minimal parser, not sluice's). Then the request limits of the
 * listener (414, 431, 413), driven through `serve()` directly.
 */
import assert from "node:assert/strict";
import { BodyTooLarge, DEFAULT_LIMITS, serve, textReply } from "../lib/listener/server.ts";
import type { RequestLimits } from "../lib/listener/request.ts";
import { rawServer, startTestBalancer } from "./helpers.ts";
import { bytes, RawClient, type RawResponse, untilClosed, within } from "./proxy_helpers.ts";

const WAIT = 15_000;
/** One character per byte (TextDecoder's "latin1" is windows-1252, which remaps 0x80-0x9F). */
const latin1 = { decode: (b: Uint8Array) => String.fromCharCode(...b) };

/** What the recording backend received for one request. */
interface Received {
  head: string;
  body: string;
}

/**
 * A raw backend that reads whole requests (Content-Length or chunked bodies) and records each
 * one only once all of it arrived; it answers 200 with the request's head and body as JSON.
 */
function recordingBackend() {
  const received: Received[] = [];
  const serveConn = async (conn: Deno.Conn) => {
    let buf = "";
    const chunk = new Uint8Array(65536);
    const more = async () => {
      const n = await conn.read(chunk);
      if (n === null) throw new Error("closed");
      buf += latin1.decode(chunk.subarray(0, n));
    };
    const line = async () => {
      while (!buf.includes("\r\n")) await more();
      const at = buf.indexOf("\r\n");
      const text = buf.slice(0, at);
      buf = buf.slice(at + 2);
      return text;
    };
    for (;;) {
      while (!buf.includes("\r\n\r\n")) await more();
      const end = buf.indexOf("\r\n\r\n");
      const head = buf.slice(0, end);
      buf = buf.slice(end + 4);
      const field = (name: string) =>
        head.split("\r\n").slice(1).filter((l) => l.toLowerCase().startsWith(name + ":"))
          .map((l) => l.slice(name.length + 1).trim());
      let body = "";
      if (field("transfer-encoding").length) {
        for (;;) {
          const size = parseInt(await line(), 16);
          if (size === 0) {
            while ((await line()) !== "") { /* trailers */ }
            break;
          }
          while (buf.length < size + 2) await more();
          body += buf.slice(0, size);
          buf = buf.slice(size + 2);
        }
      } else if (field("content-length").length) {
        const length = Number(field("content-length")[0]);
        while (buf.length < length) await more();
        body = buf.slice(0, length);
        buf = buf.slice(length);
      }
      if (/user-agent: sluice-health-check/i.test(head)) {
        await conn.write(bytes("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"));
        continue;
      }
      received.push({ head, body });
      const json = JSON.stringify({ head, body });
      await conn.write(bytes(`HTTP/1.1 200 OK\r\ncontent-length: ${json.length}\r\n\r\n${json}`));
    }
  };
  return { ...rawServer(serveConn), received };
}

/** Runs `fn` against a balancer in front of a recording backend. */
async function withBalancer(
  fn: (port: number, backend: ReturnType<typeof recordingBackend>) => Promise<void>,
) {
  const backend = recordingBackend();
  try {
    await using lb = await startTestBalancer({ backends: [{ url: backend.url }] });
    await fn(lb.balancer.addr.port, backend);
  } finally {
    backend.close();
  }
}

/** Sends `request` on a new connection; returns the response and whether the socket then closed. */
async function exchange(port: number, request: string | Uint8Array) {
  using client = await RawClient.connect(port);
  await client.send(request).catch(() => {}); // the balancer may refuse before reading it all
  const res = await within(client.readResponse(), WAIT, "the response");
  return {
    res,
    client,
    after: res.header("connection") === "close"
      ? await untilClosed(client, { decoder: latin1 })
      : "",
  };
}

/** Asserts a refusal: `status`, Connection: close, nothing after it, the socket closed. */
async function refused(port: number, request: string, status: number, what: string) {
  using client = await RawClient.connect(port);
  await client.send(request).catch(() => {});
  const res: RawResponse = await within(client.readResponse(), WAIT, what);
  assert.equal(res.status, status, `${what}: ${res.head}`);
  assert.match(res.header("connection") ?? "", /\bclose\b/i, `${what}: ${res.head}`);
  assert.equal(client.leftover, 0, `${what}: bytes after the refusal`);
  assert.equal(
    await untilClosed(client, { decoder: latin1 }),
    "",
    `${what}: bytes after the refusal`,
  );
}

const H = "Host: lb.test\r\n";
const get = (line: string, fields = H) => `${line}\r\n${fields}\r\n`;
const chunked = (body: string) =>
  `POST /up HTTP/1.1\r\n${H}Transfer-Encoding: chunked\r\n\r\n${body}`;

// ---------------------------------------------------------------------------------------------
// Refused before anything reaches a backend.

const refusedHeads: [status: number, name: string, request: string][] = [
  // RFC 9112 §3.2: Host is uri-host [":" port].
  [400, "Host with userinfo", get("GET / HTTP/1.1", "Host: user@lb.test\r\n")],
  [400, "Host with a path", get("GET / HTTP/1.1", "Host: lb.test/x\r\n")],
  [400, "Host as a list", get("GET / HTTP/1.1", "Host: a.test, b.test\r\n")],
  [400, "Host with a non-numeric port", get("GET / HTTP/1.1", "Host: lb.test:8o\r\n")],
  [400, "Host with a port over 65535", get("GET / HTTP/1.1", "Host: lb.test:65536\r\n")],
  [400, "Host with a space", get("GET / HTTP/1.1", "Host: lb test\r\n")],
  [400, "an empty Host (RFC 9110 §4.2.1)", get("GET / HTTP/1.1", "Host:\r\n")],
  // RFC 9112 §3.2.2: absolute form on HTTP/1.1 still needs Host; RFC 9110 §4.2.4: no userinfo.
  [400, "absolute form without Host on HTTP/1.1", get("GET http://lb.test/ HTTP/1.1", "")],
  [400, "absolute form with userinfo", get("GET http://u:p@lb.test/ HTTP/1.1")],
  // RFC 9112 §3: a target longer than the server accepts is 414, however long the head.
  [414, "a 9 KiB target", get(`GET /${"a".repeat(9 * 1024)} HTTP/1.1`)],
  [414, "a 70 000-byte target (head over 64 KiB)", get(`GET /${"a".repeat(70_000)} HTTP/1.1`)],
  [431, "101 header fields", get("GET / HTTP/1.1", H + "X-A: 1\r\n".repeat(100))],
  [505, "HTTP/2.0", get("GET / HTTP/2.0")],
];

Deno.test("refused requests: status, close, and nothing reaches the backend", async () => {
  await withBalancer(async (port, backend) => {
    for (const [status, name, request] of refusedHeads) {
      await refused(port, request, status, name);
    }
    assert.deepEqual(backend.received, []);
  });
});

// RFC 9112 §7.1.1: chunk = chunk-size [ chunk-ext ] CRLF, and chunk-ext is tokens after ";".
const badChunks: [name: string, body: string][] = [
  ["trailing whitespace after the size", "5 \r\nhello\r\n0\r\n\r\n"],
  ["a tab after the size", "5\t\r\nhello\r\n0\r\n\r\n"],
  ["a bare ;", "5;\r\nhello\r\n0\r\n\r\n"],
  ["an extension name that is not a token", "5;a b\r\nhello\r\n0\r\n\r\n"],
  ["an extension value that is not a token", "5;a=b c\r\nhello\r\n0\r\n\r\n"],
  ["an unterminated quoted extension", '5;a="b\r\nhello\r\n0\r\n\r\n'],
  ["a NUL in the size line", "5\0\r\nhello\r\n0\r\n\r\n"],
  ["a bare CR in the size line", "5\r;\r\nhello\r\n0\r\n\r\n"],
  ["a bare LF ending the size line", "5\nhello\r\n0\r\n\r\n"],
  ["no CRLF after the data", "5\r\nhelloX0\r\n\r\n"],
  ["a size with 0x", "0x5\r\nhello\r\n0\r\n\r\n"],
  ["a malformed trailer", "5\r\nhello\r\n0\r\nno colon\r\n\r\n"],
];

Deno.test("malformed chunked bodies: 400, closed, and the backend never gets a whole request", async () => {
  await withBalancer(async (port, backend) => {
    for (const [name, body] of badChunks) await refused(port, chunked(body), 400, name);
    assert.deepEqual(backend.received, []);
    // Good ones still pass, BWS before ";" and around "=" included (RFC 9110 §5.6.3).
    const { res } = await exchange(port, chunked('5 ; a = "x y" ;b\r\nhello\r\n0\r\n\r\n'));
    assert.equal(JSON.parse(res.text()).body, "hello");
  });
});

// ---------------------------------------------------------------------------------------------
// Accepted, and what the backend receives.

/** The backend's view of one request sent on a new connection. */
async function upstream(port: number, request: string): Promise<{ lines: string[]; body: string }> {
  const { res } = await exchange(port, request);
  assert.equal(res.status, 200, res.head);
  const got = JSON.parse(res.text()) as Received;
  return { lines: got.head.split("\r\n"), body: got.body };
}

Deno.test("repeated Content-Length (5, 5 or two lines of 5) goes up as one Content-Length: 5", async () => {
  await withBalancer(async (port) => {
    for (
      const fields of [
        "Content-Length: 5\r\nContent-Length: 5\r\n",
        "Content-Length: 5, 5\r\n",
        "content-length: 5,5\r\nX-A: 1\r\nContent-Length: 5\r\n",
      ]
    ) {
      const { lines, body } = await upstream(port, `POST /p HTTP/1.1\r\n${H}${fields}\r\nhello`);
      const sized = lines.filter((l) => /^content-length:/i.test(l));
      assert.deepEqual(sized.map((l) => l.toLowerCase()), ["content-length: 5"], lines.join("|"));
      assert.equal(body, "hello");
    }
  });
});

Deno.test("absolute form: the target's authority replaces Host upstream; the path goes as origin form", async () => {
  await withBalancer(async (port) => {
    const { lines } = await upstream(
      port,
      "GET http://app.example:8081/a/b?c=d#frag HTTP/1.1\r\nHost: other.example\r\n\r\n",
    );
    assert.equal(lines[0], "GET /a/b?c=d HTTP/1.1");
    assert.deepEqual(lines.filter((l) => /^host:/i.test(l)), ["host: app.example:8081"]);
    assert.ok(lines.includes("x-forwarded-host: app.example:8081"), lines.join("|"));
  });
});

Deno.test("a #fragment is not sent upstream", async () => {
  await withBalancer(async (port) => {
    const { lines } = await upstream(port, get("GET /page?x=1#section-2 HTTP/1.1"));
    assert.equal(lines[0], "GET /page?x=1 HTTP/1.1");
  });
});

Deno.test("HTTP/1.2 and HTTP/1.9 are answered as HTTP/1.1, keep-alive", async () => {
  await withBalancer(async (port) => {
    using client = await RawClient.connect(port);
    for (const version of ["1.2", "1.9", "1.1"]) {
      await client.send(get(`GET /v${version} HTTP/${version}`));
      const res = await within(client.readResponse(), WAIT, `HTTP/${version}`);
      assert.equal(res.status, 200, res.head);
      assert.match(res.head, /^HTTP\/1\.1 200/);
      assert.equal(JSON.parse(res.text()).head.split("\r\n")[0], `GET /v${version} HTTP/1.1`);
    }
  });
});

Deno.test("valid Host forms are accepted: IPv6 literal, port, empty port, percent-encoding", async () => {
  await withBalancer(async (port) => {
    for (const host of ["[::1]:8080", "127.0.0.1:80", "lb.test:", "l%62.test", "LB.Test"]) {
      const { lines } = await upstream(port, get("GET / HTTP/1.1", `Host: ${host}\r\n`));
      assert.ok(lines.includes(`Host: ${host}`), `${host}: ${lines.join("|")}`);
    }
  });
});

// ---------------------------------------------------------------------------------------------
// Request limits, through serve() itself.

/** A server whose handler reads the whole body and answers with its length; counts handler calls. */
function limitedServer(limits: RequestLimits) {
  let calls = 0;
  const errors: unknown[] = [];
  const server = serve({
    hostname: "127.0.0.1",
    port: 0,
    timeouts: { header: 10_000, idle: 10_000, client: 10_000 },
    limits,
    handler: async (req) => {
      calls++;
      let size = 0;
      if (req.body) { for await (const piece of req.body) size += piece.length; }
      return textReply(200, `${req.target} ${size}`);
    },
    onError: (err) => errors.push(err),
  });
  return {
    server,
    errors,
    get calls() {
      return calls;
    },
  };
}

Deno.test("limits: defaults are exported and used when none are given", () => {
  assert.deepEqual({ ...DEFAULT_LIMITS }, {
    maxHeaderBytes: 64 * 1024,
    maxHeaders: 100,
    maxUriLength: 8 * 1024,
    maxBodySize: Infinity,
  });
});

Deno.test("limits: 414 and 431 by their own limits, early for a head still arriving", async () => {
  const s = limitedServer({ ...DEFAULT_LIMITS, maxUriLength: 100, maxHeaderBytes: 2000 });
  try {
    const port = s.server.addr.port;
    await refused(port, get(`GET /${"a".repeat(100)} HTTP/1.1`), 414, "a 101-byte target");
    await refused(port, get("GET / HTTP/1.1", H + `X: ${"v".repeat(2000)}\r\n`), 431, "2 KB head");
    // An endless target or header is refused as soon as it is over the limit, unfinished.
    for (
      const [start, status] of [
        [`GET /${"a".repeat(500)}`, 414],
        [`GET / HTTP/1.1\r\n${H}X: ${"v".repeat(3000)}`, 431],
      ] as const
    ) {
      using client = await RawClient.connect(port);
      await client.send(start);
      const res = await within(client.readResponse(), WAIT, "a refusal before the head ends");
      assert.equal(res.status, status, res.head);
    }
    // Within the limits: served.
    const { res } = await exchange(port, get(`GET /${"a".repeat(99)} HTTP/1.1`));
    assert.equal(res.text(), `/${"a".repeat(99)} 0`);
    assert.equal(s.calls, 1);
  } finally {
    await s.server.shutdown();
  }
});

Deno.test("limits: maxHeaderBytes above 64 KiB lets a larger head through", async () => {
  const s = limitedServer({ ...DEFAULT_LIMITS, maxHeaderBytes: 256 * 1024 });
  try {
    const big = get("GET /big HTTP/1.1", H + `X: ${"v".repeat(150_000)}\r\n`);
    const { res } = await exchange(s.server.addr.port, big);
    assert.equal(res.status, 200, res.head);
    await refused(
      s.server.addr.port,
      get("GET / HTTP/1.1", H + `X: ${"v".repeat(300_000)}\r\n`),
      431,
      "a 300 KB head",
    );
  } finally {
    await s.server.shutdown();
  }
});

Deno.test("limits: a Content-Length over maxBodySize gets 413 before the handler runs", async () => {
  const s = limitedServer({ ...DEFAULT_LIMITS, maxBodySize: 10 });
  try {
    const port = s.server.addr.port;
    const post = (length: number, extra = "") =>
      `POST /u HTTP/1.1\r\n${H}Content-Length: ${length}\r\n${extra}\r\n${"x".repeat(length)}`;
    await refused(port, post(11), 413, "11 bytes");
    // With Expect: 100-continue the client is told before it sends the body.
    {
      using client = await RawClient.connect(port);
      await client.send(
        `POST /u HTTP/1.1\r\n${H}Content-Length: 1000000\r\nExpect: 100-continue\r\n\r\n`,
      );
      const res = await within(client.readResponse(), WAIT, "the 413");
      assert.equal(res.status, 413, res.head);
    }
    assert.equal(s.calls, 0, "the handler ran for a body over the limit");
    assert.equal((await exchange(port, post(10))).res.text(), "/u 10");
  } finally {
    await s.server.shutdown();
  }
});

Deno.test("limits: a chunked body growing past maxBodySize errors with BodyTooLarge, and the client gets 413", async () => {
  let seen: unknown;
  const server = serve({
    hostname: "127.0.0.1",
    port: 0,
    timeouts: { header: 10_000, idle: 10_000, client: 10_000 },
    limits: { ...DEFAULT_LIMITS, maxBodySize: 10 },
    handler: async (req) => {
      try {
        for await (const _ of req.body!) { /* read it all */ }
      } catch (err) {
        seen = err;
        throw err; // the server answers 413 for it
      }
      return textReply(200, "read");
    },
    onError: () => {},
  });
  try {
    const port = server.addr.port;
    await refused(port, chunked("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"), 413, "11 chunked bytes");
    assert.ok(seen instanceof BodyTooLarge, `the body failed with ${seen}`);
    assert.equal((seen as BodyTooLarge).status, 413);
    // Refused on the declared chunk size, before its bytes arrive.
    {
      using client = await RawClient.connect(port);
      await client.send(chunked("ffffff\r\nabc"));
      const res = await within(client.readResponse(), WAIT, "413 for a huge chunk");
      assert.equal(res.status, 413, res.head);
    }
    const { res } = await exchange(port, chunked("5\r\nhello\r\n5\r\nworld\r\n0\r\n\r\n"));
    assert.equal(res.text(), "read");
  } finally {
    await server.shutdown();
  }
});

Deno.test("limits: replacing server.limits applies to the next request (a reload)", async () => {
  const s = limitedServer({ ...DEFAULT_LIMITS });
  try {
    const port = s.server.addr.port;
    using client = await RawClient.connect(port);
    await client.send(get(`GET /${"a".repeat(200)} HTTP/1.1`));
    assert.equal((await within(client.readResponse(), WAIT, "first")).status, 200);
    s.server.limits = { ...DEFAULT_LIMITS, maxUriLength: 100 };
    // Same keep-alive connection: the new limit holds.
    await client.send(get(`GET /${"a".repeat(200)} HTTP/1.1`));
    assert.equal((await within(client.readResponse(), WAIT, "second")).status, 414);
  } finally {
    await s.server.shutdown();
  }
});

Deno.test("an invalid chunk reaching the handler's stream: the client gets 400, not a reset", async () => {
  const server = serve({
    hostname: "127.0.0.1",
    port: 0,
    timeouts: { header: 10_000, idle: 10_000, client: 10_000 },
    handler: async (req) => {
      for await (const _ of req.body!) { /* read it all */ }
      return textReply(200, "read");
    },
    onError: () => {},
  });
  try {
    await refused(server.addr.port, chunked("5\r\nhello\r\nzz\r\n"), 400, "a bad chunk size");
  } finally {
    await server.shutdown();
  }
});
