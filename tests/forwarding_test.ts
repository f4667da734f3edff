/** What a backend receives: the client's request head minus hop-by-hop headers, plus X-Forwarded-*. */
import assert from "node:assert/strict";
import { cidrMatcher } from "../lib/cidr.ts";
import { clientAddress, forwardHead } from "../lib/forwarding.ts";
import { clientRequest } from "./helpers.ts";

/** The head's request line and header lines, without the trailing CRLF. */
function lines(text: string): string[] {
  assert.ok(text.endsWith("\r\n"), "every line ends with CRLF");
  return text.slice(0, -2).split("\r\n");
}

/** A request with `fields` ("Name: value" lines) after the request line. */
function request(fields: string[], line = "GET /path?q=1 HTTP/1.1") {
  return clientRequest(`${line}\r\n${fields.map((f) => f + "\r\n").join("")}\r\n`);
}

Deno.test("request line and header lines go through as sent: case, order and repeats", () => {
  const head = forwardHead(
    request([
      "Host: lb.example:8080",
      "Accept: text/html",
      "X-Custom: a, b",
      "cookie: s=1; t=2",
      "X-Dup: 1",
      "X-DUP: 2",
    ]),
    "203.0.113.7",
    "http",
    undefined,
  );
  assert.deepEqual(lines(head.text), [
    "GET /path?q=1 HTTP/1.1",
    "Host: lb.example:8080",
    "Accept: text/html",
    "X-Custom: a, b",
    "cookie: s=1; t=2",
    "X-Dup: 1",
    "X-DUP: 2",
    "x-forwarded-for: 203.0.113.7",
    "x-forwarded-proto: http",
    "x-forwarded-host: lb.example:8080",
  ]);
  assert.equal(head.hasHost, true);
  assert.equal(head.chunked, false);
});

Deno.test("hop-by-hop headers and every header Connection names are removed", () => {
  const head = forwardHead(
    request([
      "Host: h",
      "Connection: keep-alive, X-Secret, x-debug",
      "X-Secret: s",
      "x-debug: 1",
      "Keep-Alive: timeout=5",
      "Proxy-Connection: keep-alive",
      "TE: trailers",
      "Trailer: X-Sum",
      "Upgrade: websocket",
      "X-Kept: yes",
    ]),
    "10.0.0.1",
    "http",
    undefined,
  );
  assert.deepEqual(lines(head.text), [
    "GET /path?q=1 HTTP/1.1",
    "Host: h",
    "X-Kept: yes",
    "x-forwarded-for: 10.0.0.1",
    "x-forwarded-proto: http",
    "x-forwarded-host: h",
  ]);
});

Deno.test("from an untrusted peer, X-Forwarded-For is replaced by the peer's address", () => {
  const spoofing = request([
    "Host: real.example",
    "X-Forwarded-For: 198.51.100.1, 10.1.1.1",
    "X-Forwarded-For: 198.51.100.2",
    "X-Forwarded-Proto: https",
    "X-Forwarded-Host: spoofed.example",
  ]);
  const expected = [
    "x-forwarded-for: 203.0.113.7",
    "x-forwarded-proto: http",
    "x-forwarded-host: real.example",
  ];
  const forwarded = (text: string) => lines(text).filter((l) => /^x-forwarded-/i.test(l));
  // The default trusts nobody.
  assert.deepEqual(
    forwarded(forwardHead(spoofing, "203.0.113.7", "http", undefined).text),
    expected,
  );
  const trusted = cidrMatcher(["10.0.0.0/8"]);
  assert.deepEqual(
    forwarded(forwardHead(spoofing, "203.0.113.7", "http", undefined, trusted).text),
    expected,
  );
});

Deno.test("from a trusted peer, X-Forwarded-For is kept and the peer's address appended", () => {
  const head = forwardHead(
    request([
      "Host: real.example",
      "X-Forwarded-For: 198.51.100.1, 10.1.1.1",
      "X-Forwarded-For: 198.51.100.2",
      "X-Forwarded-Proto: https",
      "X-Forwarded-Host: spoofed.example",
    ]),
    "10.0.0.2",
    "https",
    undefined,
    cidrMatcher(["10.0.0.0/8"]),
  );
  assert.deepEqual(lines(head.text).filter((l) => /^x-forwarded-/i.test(l)), [
    "x-forwarded-for: 198.51.100.1, 10.1.1.1, 198.51.100.2, 10.0.0.2",
    "x-forwarded-proto: https",
    "x-forwarded-host: real.example",
  ]);
  // A trusted peer that sent none: just its address.
  const plain = forwardHead(request(["Host: h"]), "10.0.0.2", "http", undefined, () => true);
  assert.ok(lines(plain.text).includes("x-forwarded-for: 10.0.0.2"));
});

Deno.test("clientAddress: the right-most address that is not a trusted proxy", () => {
  const trusted = cidrMatcher(["10.0.0.0/8", "192.168.0.0/16", "::1"]);
  const req = (xff: string[], ip: string) =>
    clientRequest(
      `GET / HTTP/1.1\r\nHost: h\r\n${xff.map((v) => `X-Forwarded-For: ${v}\r\n`).join("")}\r\n`,
      ip,
    );
  const cases: [xff: string[], peer: string, client: string][] = [
    // An untrusted peer is the client, whatever it claims.
    [["1.1.1.1"], "203.0.113.7", "203.0.113.7"],
    [[], "203.0.113.7", "203.0.113.7"],
    // A trusted peer without X-Forwarded-For is the client too.
    [[], "10.0.0.1", "10.0.0.1"],
    // Trusted hops are skipped from the right; the first untrusted one is the client.
    [["198.51.100.9"], "10.0.0.1", "198.51.100.9"],
    [["6.6.6.6, 198.51.100.9, 192.168.1.1"], "10.0.0.1", "198.51.100.9"],
    [["6.6.6.6", "198.51.100.9", "192.168.1.1,10.9.9.9"], "10.0.0.1", "198.51.100.9"],
    [["2001:db8::5 , ::1"], "::ffff:10.0.0.1", "2001:db8::5"],
    // Every hop trusted: the left-most one.
    [["10.1.1.1, 192.168.0.1"], "10.0.0.1", "10.1.1.1"],
    // Empty list elements are skipped; garbage stops the walk at the last trusted hop.
    [["198.51.100.9, , 10.1.1.1"], "10.0.0.1", "198.51.100.9"],
    [["198.51.100.9, unknown, 10.1.1.1"], "10.0.0.1", "10.1.1.1"],
    [["1.2.3.4:5678"], "10.0.0.1", "10.0.0.1"],
  ];
  for (const [xff, peer, client] of cases) {
    assert.equal(clientAddress(req(xff, peer), trusted), client, `${xff} via ${peer}`);
  }
  assert.equal(clientAddress(req(["1.1.1.1"], "10.0.0.1"), cidrMatcher([])), "10.0.0.1");
});

Deno.test("repeated Content-Length lines, or one listing 5, 5, go up as one Content-Length", () => {
  for (
    const fields of [
      ["Host: h", "Content-Length: 5", "X-A: 1", "content-length: 5"],
      ["Host: h", "Content-Length: 5, 5", "X-A: 1"],
      ["Host: h", "Content-Length: 5,5", "X-A: 1", "Content-Length: 5"],
    ]
  ) {
    const head = forwardHead(request(fields, "POST / HTTP/1.1"), "1.1.1.1", "http", undefined);
    const sized = lines(head.text).filter((l) => /^content-length/i.test(l));
    assert.equal(sized.length, 1, head.text);
    assert.match(sized[0], /^content-length: 5$/i);
    // Where the first one was, with its name as sent.
    assert.equal(lines(head.text)[2].toLowerCase(), "content-length: 5");
  }
});

Deno.test("absolute form: the target's authority replaces the client's Host line", () => {
  const head = forwardHead(
    request(["Accept: */*", "Host: other.example"], "GET http://app.example:81/a#frag HTTP/1.1"),
    "10.0.0.1",
    "http",
    undefined,
  );
  assert.deepEqual(lines(head.text), [
    "GET /a HTTP/1.1",
    "Accept: */*",
    "host: app.example:81",
    "x-forwarded-for: 10.0.0.1",
    "x-forwarded-proto: http",
    "x-forwarded-host: app.example:81",
  ]);
  assert.equal(head.hasHost, true);
});

Deno.test("an HTTP/1.0 request without Host gets no invented Host or X-Forwarded-Host", () => {
  const head = forwardHead(request(["Accept: */*"], "GET / HTTP/1.0"), "::1", "https", undefined);
  assert.equal(head.hasHost, false);
  assert.deepEqual(lines(head.text), [
    "GET / HTTP/1.1",
    "Accept: */*",
    "x-forwarded-for: ::1",
    "x-forwarded-proto: https",
  ]);
});

Deno.test("an absolute-form target goes upstream as path and query, its authority as Host", () => {
  const head = forwardHead(
    request([], "GET http://app.example:81/a?b=1 HTTP/1.0"),
    "10.0.0.1",
    "http",
    undefined,
  );
  assert.deepEqual(lines(head.text), [
    "GET /a?b=1 HTTP/1.1",
    "host: app.example:81",
    "x-forwarded-for: 10.0.0.1",
    "x-forwarded-proto: http",
    "x-forwarded-host: app.example:81",
  ]);
});

Deno.test("a generated request id replaces the client's; without one the client's passes", () => {
  const req = () => request(["Host: h", "X-Request-Id: client-chosen"]);
  const generated = lines(forwardHead(req(), "1.1.1.1", "http", "gen-42").text);
  assert.deepEqual(generated.filter((l) => /^x-request-id/i.test(l)), ["x-request-id: gen-42"]);
  assert.equal(generated.at(-1), "x-request-id: gen-42");
  const head = forwardHead(req(), "1.1.1.1", "http", undefined);
  assert.deepEqual(lines(head.text).filter((l) => /^x-request-id/i.test(l)), [
    "X-Request-Id: client-chosen",
  ]);
  assert.equal(head.requestId, "client-chosen");
});

Deno.test("nothing else is added: only X-Forwarded-* and a generated x-request-id", () => {
  const added = lines(
    forwardHead(request(["Host: h", "Accept: */*"]), "1.1.1.1", "http", "id-1").text,
  )
    .slice(3)
    .map((l) => l.slice(0, l.indexOf(":")));
  assert.deepEqual(added, [
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-request-id",
  ]);
});

Deno.test("a body with Content-Length keeps it; a chunked body is sent chunked", () => {
  const sized = forwardHead(
    request(["Host: h", "Content-Length: 5"], "POST /upload HTTP/1.1"),
    "1.1.1.1",
    "http",
    undefined,
  );
  assert.equal(sized.chunked, false);
  assert.ok(lines(sized.text).includes("Content-Length: 5"));
  assert.ok(!/transfer-encoding/i.test(sized.text));

  const streamed = forwardHead(
    request(["Host: h", "Transfer-Encoding: chunked"], "POST /upload HTTP/1.1"),
    "1.1.1.1",
    "http",
    undefined,
  );
  assert.equal(streamed.chunked, true);
  assert.deepEqual(lines(streamed.text).filter((l) => /^transfer-encoding/i.test(l)), [
    "transfer-encoding: chunked",
  ]);
  assert.equal(lines(streamed.text).at(-1), "transfer-encoding: chunked");

  const bodiless = forwardHead(request(["Host: h"]), "1.1.1.1", "http", undefined);
  assert.equal(bodiless.chunked, false);
  assert.ok(!/transfer-encoding/i.test(bodiless.text));
});

Deno.test("Content-Length stays even when Connection names it: framing is not hop-by-hop", () => {
  const head = forwardHead(
    request(
      ["Host: h", "Content-Length: 3", "Connection: content-length, x-a", "X-A: 1"],
      "PUT / HTTP/1.1",
    ),
    "1.1.1.1",
    "http",
    undefined,
  );
  assert.ok(lines(head.text).includes("Content-Length: 3"));
  assert.ok(!head.text.includes("X-A"));
  assert.equal(head.chunked, false);
});
