/** What a backend receives: the client's request head minus hop-by-hop headers, plus X-Forwarded-*. */
import assert from "node:assert/strict";
import { forwardHead, requestTarget } from "../lib/forwarding.ts";

/** The head's request line and header lines, without the trailing CRLF. */
function lines(text: string): string[] {
  assert.ok(text.endsWith("\r\n"), "every line ends with CRLF");
  return text.slice(0, -2).split("\r\n");
}

function get(headers: HeadersInit, url = "http://lb.example/path?q=1"): Request {
  return new Request(url, { headers });
}

Deno.test("request line and ordinary headers go through unchanged, Host included", () => {
  const head = forwardHead(
    get({ host: "lb.example:8080", accept: "text/html", "x-custom": "a, b", cookie: "s=1; t=2" }),
    "/path?q=1",
    "203.0.113.7",
    "http",
    undefined,
  );
  assert.deepEqual(lines(head.text), [
    "GET /path?q=1 HTTP/1.1",
    "accept: text/html",
    "cookie: s=1; t=2",
    "host: lb.example:8080",
    "x-custom: a, b",
    "x-forwarded-for: 203.0.113.7",
    "x-forwarded-proto: http",
    "x-forwarded-host: lb.example:8080",
  ]);
  assert.equal(head.hasHost, true);
  assert.equal(head.chunked, false);
});

Deno.test("hop-by-hop headers and every header Connection names are removed", () => {
  const head = forwardHead(
    get({
      host: "h",
      connection: "keep-alive, X-Secret, x-debug",
      "x-secret": "s",
      "x-debug": "1",
      "keep-alive": "timeout=5",
      "proxy-connection": "keep-alive",
      te: "trailers",
      trailer: "X-Sum",
      upgrade: "websocket",
      "x-kept": "yes",
    }),
    "/",
    "10.0.0.1",
    "http",
    undefined,
  );
  assert.deepEqual(lines(head.text), [
    "GET / HTTP/1.1",
    "host: h",
    "x-kept: yes",
    "x-forwarded-for: 10.0.0.1",
    "x-forwarded-proto: http",
    "x-forwarded-host: h",
  ]);
});

Deno.test("X-Forwarded-For is appended to; -Proto and -Host replace what the client sent", () => {
  const head = forwardHead(
    get({
      host: "real.example",
      "x-forwarded-for": "198.51.100.1, 10.1.1.1",
      "x-forwarded-proto": "https",
      "x-forwarded-host": "spoofed.example",
    }),
    "/",
    "203.0.113.7",
    "http",
    undefined,
  );
  const text = lines(head.text);
  assert.deepEqual(text.filter((l) => l.startsWith("x-forwarded-")), [
    "x-forwarded-for: 198.51.100.1, 10.1.1.1, 203.0.113.7",
    "x-forwarded-proto: http",
    "x-forwarded-host: real.example",
  ]);
});

Deno.test("without a Host header no X-Forwarded-Host is invented", () => {
  const head = forwardHead(get({ accept: "*/*" }), "/", "::1", "https", undefined);
  assert.equal(head.hasHost, false);
  assert.deepEqual(lines(head.text), [
    "GET / HTTP/1.1",
    "accept: */*",
    "x-forwarded-for: ::1",
    "x-forwarded-proto: https",
  ]);
});

Deno.test("a generated request id replaces the client's; without one the client's passes", () => {
  const req = () => get({ host: "h", "x-request-id": "client-chosen" });
  const generated = lines(forwardHead(req(), "/", "1.1.1.1", "http", "gen-42").text);
  assert.deepEqual(generated.filter((l) => l.startsWith("x-request-id")), ["x-request-id: gen-42"]);
  assert.equal(generated.at(-1), "x-request-id: gen-42");
  const passed = lines(forwardHead(req(), "/", "1.1.1.1", "http", undefined).text);
  assert.deepEqual(passed.filter((l) => l.startsWith("x-request-id")), [
    "x-request-id: client-chosen",
  ]);
});

Deno.test("nothing else is added: only X-Forwarded-* and a generated x-request-id", () => {
  const req = get({ host: "h", accept: "*/*" });
  const sent = new Set([...req.headers.keys()]);
  const added = lines(forwardHead(req, "/", "1.1.1.1", "http", "id-1").text).slice(1)
    .map((l) => l.slice(0, l.indexOf(":")))
    .filter((name) => !sent.has(name));
  assert.deepEqual(added, [
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-request-id",
  ]);
});

Deno.test("a body with Content-Length keeps it; a body without a length is sent chunked", () => {
  const sized = new Request("http://h/upload", {
    method: "POST",
    headers: { host: "h", "content-length": "5" },
    body: "hello",
  });
  const a = forwardHead(sized, "/upload", "1.1.1.1", "http", undefined);
  assert.equal(a.chunked, false);
  assert.ok(lines(a.text).includes("content-length: 5"));
  assert.ok(!a.text.includes("transfer-encoding"));

  const streamed = new Request("http://h/upload", {
    method: "POST",
    headers: { host: "h", "transfer-encoding": "chunked" },
    body: ReadableStream.from([new TextEncoder().encode("hello")]),
  });
  const b = forwardHead(streamed, "/upload", "1.1.1.1", "http", undefined);
  assert.equal(b.chunked, true);
  assert.deepEqual(lines(b.text).filter((l) => l.startsWith("transfer-encoding")), [
    "transfer-encoding: chunked",
  ]);
  assert.equal(lines(b.text).at(-1), "transfer-encoding: chunked");
  void streamed.body?.cancel();

  const bodiless = forwardHead(get({ host: "h" }), "/", "1.1.1.1", "http", undefined);
  assert.equal(bodiless.chunked, false);
  assert.ok(!bodiless.text.includes("transfer-encoding"));
});

Deno.test("Content-Length named by Connection is dropped, so the body goes chunked", () => {
  const req = new Request("http://h/", {
    method: "PUT",
    headers: { host: "h", "content-length": "3", connection: "content-length" },
    body: "abc",
  });
  const head = forwardHead(req, "/", "1.1.1.1", "http", undefined);
  assert.ok(!head.text.includes("content-length"));
  assert.equal(head.chunked, true);
  void req.body?.cancel();
});

Deno.test("a real client's request through Deno.serve is forwarded as described", async () => {
  const seen = Promise.withResolvers<string>();
  await using server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen() {} },
    (req, info) => {
      seen.resolve(
        forwardHead(req, requestTarget(req.url), info.remoteAddr.hostname, "http", undefined).text,
      );
      return new Response("ok");
    },
  );
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: server.addr.port });
  await conn.write(new TextEncoder().encode(
    "GET /a/b?x=1&y=%20 HTTP/1.1\r\nHost: lb.test\r\nConnection: close, X-Hop\r\nX-Hop: 1\r\n" +
      "X-Forwarded-For: 198.51.100.1\r\nX-Forwarded-For: 198.51.100.2\r\nUpgrade: h2c\r\n" +
      "User-Agent: test\r\n\r\n",
  ));
  const text = await seen.promise;
  // Drain the answer so the connection closes cleanly.
  for await (const _ of conn.readable) { /* until the server closes */ }
  assert.deepEqual(lines(text), [
    "GET /a/b?x=1&y=%20 HTTP/1.1",
    "host: lb.test",
    "user-agent: test",
    "x-forwarded-for: 198.51.100.1, 198.51.100.2, 127.0.0.1",
    "x-forwarded-proto: http",
    "x-forwarded-host: lb.test",
  ]);
});

Deno.test("requestTarget is the path and query of the request URL", () => {
  assert.equal(requestTarget("http://h:8080/a/b?c=d&e"), "/a/b?c=d&e");
  assert.equal(requestTarget("http://h/"), "/");
  assert.equal(requestTarget("http://h"), "/");
  assert.equal(requestTarget("http://[::1]:80/p%2Fq?x=%20"), "/p%2Fq?x=%20");
  assert.equal(requestTarget("https://h/?"), "/?");
});
