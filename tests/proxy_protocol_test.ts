/**
 * The PROXY protocol (v1 text, v2 binary) both ways: the parser and encoders byte for byte,
 * a listener that requires the header (hand-built headers over raw sockets, and HAProxy's
 * `send-proxy`/`send-proxy-v2` in front), and a connection pool that sends it (to a raw
 * server, and to HAProxy's `accept-proxy`).
 */
import assert from "node:assert/strict";
import { cidrMatcher, MATCH_NONE } from "../lib/cidr.ts";
import {
  encodeProxyV1,
  encodeProxyV2,
  parseProxyHeader,
  type ProxyAddresses,
  type ProxyHeader,
  ProxyProtocolError,
} from "../lib/http1/proxy_protocol.ts";
import { serve, type Server, textReply } from "../lib/listener/server.ts";
import { ConnectionPool } from "../lib/upstream/connection_pool.ts";
import { freePort, tool } from "../bench/proc.ts";
import { concat, rawServer } from "./helpers.ts";
import { bytes, RawClient, untilClosed, within } from "./proxy_helpers.ts";

const WAIT = 15_000;
const SIG = "\r\n\r\n\0\r\nQUIT\n";

/** A v2 header from its parts: version/command byte, family byte, then the block. */
function v2(verCmd: number, fam: number, block: number[]): Uint8Array {
  return concat([
    bytes(SIG),
    Uint8Array.of(verCmd, fam, block.length >> 8, block.length & 0xff),
    Uint8Array.from(block),
  ]);
}

const be16 = (n: number) => [n >> 8, n & 0xff];
const V4_BLOCK = [203, 0, 113, 9, 198, 51, 100, 1, ...be16(4242), ...be16(8443)];
const V6_BLOCK = [
  0x20,
  0x01,
  0x0d,
  0xb8,
  ...Array(11).fill(0),
  0x09,
  ...Array(15).fill(0),
  0x01,
  ...be16(4242),
  ...be16(443),
];

/** Parses `data` fed one byte at a time: undefined until the last byte, then the header. */
function parseBytewise(data: Uint8Array): ProxyHeader {
  for (let end = 1; end < data.length; end++) {
    assert.equal(parseProxyHeader(data, 0, end), undefined, `complete after ${end} bytes`);
  }
  const header = parseProxyHeader(data, 0, data.length);
  assert.ok(header, "not complete with all bytes");
  return header;
}

function fails(data: Uint8Array | string, why: RegExp): void {
  const b = bytes(data);
  assert.throws(() => parseProxyHeader(b, 0, b.length), (err: Error) => {
    assert.ok(err instanceof ProxyProtocolError, `${err}`);
    assert.match(err.message, why);
    return true;
  }, JSON.stringify(typeof data === "string" ? data : [...data]));
}

const addrs = (sip: string, sport: number, dip: string, dport: number): ProxyAddresses => ({
  source: { ip: sip, port: sport },
  destination: { ip: dip, port: dport },
});

// ---------------------------------------------------------------------------------------------
// Parser and encoders.

Deno.test("v1: TCP4, TCP6 and UNKNOWN headers parse, however the bytes arrive", () => {
  const tcp4 = bytes("PROXY TCP4 203.0.113.9 198.51.100.1 4242 8443\r\nGET /");
  const h4 = parseBytewise(tcp4.subarray(0, tcp4.length - 5));
  assert.deepEqual(h4, {
    version: 1,
    addresses: addrs("203.0.113.9", 4242, "198.51.100.1", 8443),
    size: tcp4.length - 5,
  });
  assert.deepEqual(parseProxyHeader(tcp4, 0, tcp4.length)?.size, tcp4.length - 5);
  const h6 = parseBytewise(bytes("PROXY TCP6 2001:DB8::9 ::1 65535 0\r\n"));
  assert.deepEqual(h6.addresses, addrs("2001:db8::9", 65535, "::1", 0));
  assert.deepEqual(parseBytewise(bytes("PROXY UNKNOWN\r\n")), {
    version: 1,
    addresses: undefined,
    size: 15,
  });
  // UNKNOWN: the rest of the line is ignored.
  const unknown = "PROXY UNKNOWN ffff:f::1 ffff:f::2 65535 65535\r\n";
  assert.equal(parseBytewise(bytes(unknown)).size, unknown.length);
  // The longest legal line (107 bytes with CRLF).
  const longest = `PROXY UNKNOWN ${"ffff:".repeat(7)}ffff ${"ffff:".repeat(7)}ffff 65535 65535\r\n`;
  assert.equal(longest.length, 107);
  assert.equal(parseBytewise(bytes(longest)).size, 107);
});

Deno.test("v1: anything not exactly the spec is refused", () => {
  const cases: [string, RegExp][] = [
    ["GET / HTTP/1.1\r\n", /not a PROXY protocol header/],
    ["PROXZ TCP4", /not a PROXY protocol header/],
    ["proxy TCP4 1.1.1.1 2.2.2.2 1 2\r\n", /not a PROXY protocol header/],
    ["PROXY TCP4 1.1.1.1 2.2.2.2 1 2\n", /invalid byte 0xa|CRLF/],
    ["PROXY TCP4 1.1.1.1 2.2.2.2 1 2\rX", /invalid byte 0xd/],
    ["PROXY TCP5 1.1.1.1 2.2.2.2 1 2\r\n", /unknown PROXY v1 protocol "TCP5"/],
    ["PROXY TCP4 1.1.1.1  2.2.2.2 1 2\r\n", /malformed PROXY v1 header/],
    ["PROXY TCP4 1.1.1.1 2.2.2.2 1 2 \r\n", /malformed PROXY v1 header/],
    ["PROXY TCP4 1.1.1.1 2.2.2.2 1\r\n", /malformed PROXY v1 header/],
    ["PROXY TCP4 01.1.1.1 2.2.2.2 1 2\r\n", /invalid IPv4 address "01.1.1.1"/],
    ["PROXY TCP4 ::1 2.2.2.2 1 2\r\n", /invalid IPv4 address "::1"/],
    ["PROXY TCP6 1.1.1.1 ::2 1 2\r\n", /invalid IPv6 address "1.1.1.1"/],
    ["PROXY TCP4 1.1.1.1 2.2.2.256 1 2\r\n", /invalid IPv4 address/],
    ["PROXY TCP4 1.1.1.1 2.2.2.2 01 2\r\n", /invalid port "01"/],
    ["PROXY TCP4 1.1.1.1 2.2.2.2 1 65536\r\n", /invalid port "65536"/],
    ["PROXY TCP4 1.1.1.1 2.2.2.2 1 -2\r\n", /invalid port "-2"/],
    ["PROXY TCP4 1.1.1.1 2.2.2.2 1 2\0\r\n", /invalid byte 0x0/],
    [`PROXY UNKNOWN ${"x".repeat(100)}`, /longer than 107 bytes/],
  ];
  for (const [text, why] of cases) fails(text, why);
});

Deno.test("v2: TCP over IPv4 and IPv6, with TLVs skipped, however the bytes arrive", () => {
  const h4 = parseBytewise(v2(0x21, 0x11, V4_BLOCK));
  assert.deepEqual(h4, {
    version: 2,
    addresses: addrs("203.0.113.9", 4242, "198.51.100.1", 8443),
    size: 28,
  });
  const h6 = parseBytewise(v2(0x21, 0x21, V6_BLOCK));
  assert.deepEqual(h6.addresses, addrs("2001:db8::9", 4242, "::1", 443));
  // TLVs (ALPN "h2", an AWS-style custom one, a NOOP) are skipped.
  const tlvs = [0x01, 0, 2, 0x68, 0x32, 0xea, 0, 3, 1, 2, 3, 0x04, 0, 0];
  const withTlvs = v2(0x21, 0x11, [...V4_BLOCK, ...tlvs]);
  const h = parseBytewise(withTlvs);
  assert.equal(h.size, withTlvs.length);
  assert.equal(h.addresses?.source.ip, "203.0.113.9");
  // The bytes after the header are not part of it.
  const more = concat([withTlvs, bytes("GET / HTTP/1.1\r\n")]);
  assert.equal(parseProxyHeader(more, 0, more.length)?.size, withTlvs.length);
});

Deno.test("v2: LOCAL, UNSPEC and AF_UNIX mean: use the real connection", () => {
  // LOCAL ignores family and block, even an address block that is there.
  assert.deepEqual(parseBytewise(v2(0x20, 0x00, [])), {
    version: 2,
    addresses: undefined,
    size: 16,
  });
  assert.equal(parseBytewise(v2(0x20, 0x11, V4_BLOCK)).addresses, undefined);
  assert.equal(parseBytewise(v2(0x21, 0x00, [])).addresses, undefined);
  assert.equal(parseBytewise(v2(0x21, 0x31, Array(216).fill(0))).addresses, undefined);
});

Deno.test("v2: bad signatures, versions, commands, families, lengths and TLVs are refused", () => {
  fails(v2(0x11, 0x11, V4_BLOCK), /unsupported PROXY protocol version 1/);
  fails(v2(0x22, 0x11, V4_BLOCK), /unknown PROXY v2 command 2/);
  fails(v2(0x21, 0x41, V4_BLOCK), /unknown PROXY v2 address family\/protocol 0x41/);
  fails(v2(0x21, 0x13, V4_BLOCK), /0x13/);
  fails(v2(0x21, 0x11, V4_BLOCK.slice(0, 11)), /too short for its family/);
  fails(v2(0x21, 0x21, V4_BLOCK), /too short for its family/);
  fails(v2(0x21, 0x12, V4_BLOCK), /datagram/);
  fails(v2(0x21, 0x11, [...V4_BLOCK, 0x01, 0]), /truncated TLV/);
  fails(v2(0x21, 0x11, [...V4_BLOCK, 0x01, 0, 5, 1]), /TLV longer than/);
  const huge = v2(0x21, 0x11, [...V4_BLOCK, 0x04, ...be16(5000), ...Array(5000).fill(0)]);
  fails(huge, /over the limit/);
  const wrong = v2(0x21, 0x11, V4_BLOCK);
  wrong[7] = 0x52;
  fails(wrong, /not a PROXY protocol header/);
  // Refused at the first wrong byte, without waiting for the rest.
  fails("\r\n\r\nX", /not a PROXY protocol header/);
  fails("\x16\x03\x01", /not a PROXY protocol header/);
});

Deno.test("encoders: byte-exact v1 and v2, IPv4, IPv6, mixed families, and no addresses", () => {
  const a4 = addrs("203.0.113.9", 4242, "198.51.100.1", 8443);
  assert.equal(
    new TextDecoder().decode(encodeProxyV1(a4)),
    "PROXY TCP4 203.0.113.9 198.51.100.1 4242 8443\r\n",
  );
  assert.deepEqual(encodeProxyV2(a4), v2(0x21, 0x11, V4_BLOCK));
  const a6 = addrs("2001:db8:0::9", 4242, "::1", 443);
  assert.equal(
    new TextDecoder().decode(encodeProxyV1(a6)),
    "PROXY TCP6 2001:db8::9 ::1 4242 443\r\n",
  );
  assert.deepEqual(encodeProxyV2(a6), v2(0x21, 0x21, V6_BLOCK));
  // An IPv4-mapped end counts as IPv4; an IPv4 end with an IPv6 one is sent IPv4-mapped.
  assert.equal(
    new TextDecoder().decode(encodeProxyV1(addrs("::ffff:10.0.0.1", 1, "10.0.0.2", 2))),
    "PROXY TCP4 10.0.0.1 10.0.0.2 1 2\r\n",
  );
  assert.equal(
    new TextDecoder().decode(encodeProxyV1(addrs("10.0.0.1", 1, "2001:db8::1", 2))),
    "PROXY TCP6 ::ffff:10.0.0.1 2001:db8::1 1 2\r\n",
  );
  // No addresses, or ends that are not addresses: UNKNOWN (v1) and LOCAL (v2).
  assert.equal(new TextDecoder().decode(encodeProxyV1(undefined)), "PROXY UNKNOWN\r\n");
  assert.deepEqual(encodeProxyV2(undefined), v2(0x20, 0x00, []));
  assert.deepEqual(encodeProxyV2(addrs("unix", 0, "x", 0)), v2(0x20, 0x00, []));
  // What is encoded parses back to the same.
  for (const a of [a4, a6, addrs("0.0.0.0", 0, "255.255.255.255", 65535)]) {
    assert.deepEqual(parseBytewise(encodeProxyV1(a)).addresses, {
      source: { ip: a.source.ip.replace("2001:db8:0::9", "2001:db8::9"), port: a.source.port },
      destination: a.destination,
    });
    assert.deepEqual(parseBytewise(encodeProxyV2(a)).addresses, {
      source: { ip: a.source.ip.replace("2001:db8:0::9", "2001:db8::9"), port: a.source.port },
      destination: a.destination,
    });
  }
});

// ---------------------------------------------------------------------------------------------
// The listener: a PROXY header first, from trusted peers only.

/** A server that answers every request with the client address it saw, as JSON. */
function whoServer(
  options: { trusted?: (ip: string) => boolean; header?: number } = {},
): Server & { errors: string[] } {
  const errors: string[] = [];
  const server = serve({
    hostname: "127.0.0.1",
    port: 0,
    timeouts: { header: options.header ?? 10_000, idle: 10_000, client: 10_000 },
    proxyProtocol: true,
    trusted: options.trusted ?? cidrMatcher(["127.0.0.1"]),
    handler: (req) =>
      Promise.resolve(textReply(
        200,
        JSON.stringify({
          ip: req.ip,
          port: req.port,
          local: req.local ? `${req.local.ip}:${req.local.port}` : undefined,
          target: req.target,
        }),
      )),
    onError: (err) => errors.push(String(err)),
  });
  return Object.assign(server, { errors });
}

/** Sends `header` then a GET for `target` and returns the JSON answer. */
async function who(client: RawClient, header: Uint8Array | string, target = "/") {
  await client.send(concat([bytes(header), bytes(`GET ${target} HTTP/1.1\r\nHost: h\r\n\r\n`)]));
  const res = await within(client.readResponse(), WAIT, "the response");
  assert.equal(res.status, 200, res.head);
  return JSON.parse(res.text());
}

Deno.test("listener: a hand-built v1 or v2 header's source is the client for every request", async () => {
  const server = whoServer();
  try {
    const port = server.addr.port;
    for (
      const header of [
        "PROXY TCP4 203.0.113.9 198.51.100.1 4242 8443\r\n",
        v2(0x21, 0x11, V4_BLOCK),
        concat([v2(0x21, 0x11, [...V4_BLOCK, 0x05, 0, 4, 1, 2, 3, 4])]), // with a unique-ID TLV
      ]
    ) {
      using client = await RawClient.connect(port);
      assert.deepEqual(await who(client, header, "/1"), {
        ip: "203.0.113.9",
        port: 4242,
        local: "198.51.100.1:8443",
        target: "/1",
      });
      // Keep-alive: the next request on the connection has the same client.
      const again = await who(client, "", "/2");
      assert.deepEqual([again.ip, again.port, again.target], ["203.0.113.9", 4242, "/2"]);
    }
    using six = await RawClient.connect(port);
    const v6 = await who(six, "PROXY TCP6 2001:db8::9 ::1 4242 443\r\n");
    assert.deepEqual([v6.ip, v6.port, v6.local], ["2001:db8::9", 4242, "::1:443"]);
  } finally {
    await server.shutdown();
  }
});

Deno.test("listener: a header split across many writes is waited for", async () => {
  const server = whoServer();
  try {
    using client = await RawClient.connect(server.addr.port);
    const header = v2(0x21, 0x21, V6_BLOCK);
    for (const b of header) {
      await client.send(Uint8Array.of(b));
      await new Promise((r) => setTimeout(r, 1));
    }
    const got = await who(client, "");
    assert.deepEqual([got.ip, got.port], ["2001:db8::9", 4242]);
  } finally {
    await server.shutdown();
  }
});

Deno.test("listener: LOCAL and UNKNOWN keep the real peer as the client", async () => {
  const server = whoServer();
  try {
    for (const header of ["PROXY UNKNOWN\r\n", v2(0x20, 0x00, [])]) {
      using client = await RawClient.connect(server.addr.port);
      const got = await who(client, header);
      const local = client.conn.localAddr as Deno.NetAddr;
      assert.deepEqual([got.ip, got.port], ["127.0.0.1", local.port]);
      assert.equal(got.local, `127.0.0.1:${server.addr.port}`);
    }
  } finally {
    await server.shutdown();
  }
});

Deno.test("listener: no header, a bad one, or an untrusted peer: closed without a response", async () => {
  const server = whoServer();
  try {
    for (
      const first of [
        "GET / HTTP/1.1\r\nHost: h\r\n\r\n",
        "PROXY TCP4 1.1.1.1 2.2.2.2 1 2\n",
        "PROXY TCP4 999.1.1.1 2.2.2.2 1 2\r\n",
        v2(0x21, 0x11, V4_BLOCK.slice(0, 8)),
      ]
    ) {
      using client = await RawClient.connect(server.addr.port);
      await client.send(concat([bytes(first), bytes("GET / HTTP/1.1\r\nHost: h\r\n\r\n")]));
      assert.equal(await untilClosed(client), "", JSON.stringify(first));
    }
    assert.equal(server.errors.length, 4, server.errors.join("\n"));
    assert.match(server.errors[0], /PROXY protocol header from 127\.0\.0\.1: not a PROXY/);
  } finally {
    await server.shutdown();
  }
  const untrusting = whoServer({ trusted: MATCH_NONE });
  try {
    using client = await RawClient.connect(untrusting.addr.port);
    await client.send(concat([
      bytes("PROXY TCP4 203.0.113.9 198.51.100.1 4242 8443\r\n"),
      bytes("GET / HTTP/1.1\r\nHost: h\r\n\r\n"),
    ]));
    assert.equal(await untilClosed(client), "", "an untrusted peer was answered");
  } finally {
    await untrusting.shutdown();
  }
});

Deno.test("listener: a peer that sends no header is cut off after timeouts.header", async () => {
  const server = whoServer({ header: 500 });
  try {
    using client = await RawClient.connect(server.addr.port);
    await client.send("PROXY TCP4 ");
    const started = Date.now();
    assert.equal(await untilClosed(client), "", "a 408 or other bytes were sent");
    const elapsed = Date.now() - started;
    assert.ok(elapsed >= 300 && elapsed < 10_000, `closed after ${elapsed} ms`);
  } finally {
    await server.shutdown();
  }
});

Deno.test("listener: turning proxyProtocol on or off applies to new connections", async () => {
  const server = whoServer();
  try {
    server.proxyProtocol = false;
    using plain = await RawClient.connect(server.addr.port);
    assert.equal((await who(plain, "")).ip, "127.0.0.1");
    server.proxyProtocol = true;
    using proxied = await RawClient.connect(server.addr.port);
    assert.equal((await who(proxied, "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n")).ip, "1.2.3.4");
  } finally {
    await server.shutdown();
  }
});

// ---------------------------------------------------------------------------------------------
// The connection pool: a header first on each new connection.

/** A raw backend that records the bytes before each request head and answers 200 "ok". */
function recordingBackend() {
  const preambles: Uint8Array[] = [];
  const server = rawServer(async (conn) => {
    let buf: Uint8Array = new Uint8Array(0);
    const chunk = new Uint8Array(4096);
    let first = true;
    for (;;) {
      const at = new TextDecoder("latin1").decode(buf).indexOf("GET ");
      const end = new TextDecoder("latin1").decode(buf).indexOf("\r\n\r\n");
      if (at !== -1 && end !== -1) {
        if (first) preambles.push(buf.slice(0, at));
        first = false;
        buf = buf.slice(end + 4);
        await conn.write(bytes("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"));
        continue;
      }
      const n = await conn.read(chunk);
      if (n === null) return;
      buf = concat([buf, chunk.subarray(0, n)]);
    }
  });
  return { ...server, preambles };
}

/** One GET over `conn` (a pool connection), returning the response head's first line. */
async function get(conn: Awaited<ReturnType<ConnectionPool["connect"]>>): Promise<string> {
  await conn.writeJoined("GET / HTTP/1.1\r\nhost: b\r\n\r\n");
  for (;;) {
    const text = new TextDecoder().decode(conn.buf.subarray(conn.start, conn.end));
    const end = text.indexOf("\r\n\r\nok");
    if (end !== -1) {
      conn.start = conn.end;
      return text.slice(0, text.indexOf("\r\n"));
    }
    if ((await within(conn.fill(), WAIT, "the backend's response")) === null) {
      throw new Error("closed");
    }
  }
}

Deno.test("pool: v1 and v2 headers go first on each new connection, with the client's addresses", async () => {
  const backend = recordingBackend();
  const client = addrs("203.0.113.9", 4242, "198.51.100.1", 8443);
  try {
    for (const version of ["v1", "v2"] as const) {
      backend.preambles.length = 0;
      const pool = new ConnectionPool("127.0.0.1", backend.port, false, {
        connectTimeout: 5_000,
        idleTimeout: 60_000,
        proxyProtocol: version,
      });
      const conn = await pool.connect(client);
      assert.equal(await get(conn), "HTTP/1.1 200 OK");
      assert.deepEqual(
        backend.preambles,
        [version === "v1" ? encodeProxyV1(client) : encodeProxyV2(client)],
      );
      // Reused only for the same client (address, port and destination).
      pool.release(conn);
      assert.equal(pool.takeIdle(addrs("203.0.113.9", 4243, "198.51.100.1", 8443)), undefined);
      assert.equal(pool.takeIdle(addrs("203.0.113.10", 4242, "198.51.100.1", 8443)), undefined);
      assert.equal(pool.takeIdle(undefined), undefined);
      const again = pool.takeIdle(client);
      assert.equal(again, conn, "the same client's connection was not reused");
      assert.equal(await get(again!), "HTTP/1.1 200 OK");
      assert.equal(backend.preambles.length, 1, "a reused connection sent a second header");
      // Another client gets its own connection and header.
      const other = addrs("2001:db8::7", 5000, "::1", 80);
      const conn2 = await pool.connect(other);
      assert.equal(await get(conn2), "HTTP/1.1 200 OK");
      assert.deepEqual(
        backend.preambles[1],
        version === "v1" ? encodeProxyV1(other) : encodeProxyV2(other),
      );
      pool.release(again!);
      pool.release(conn2);
      pool.retire();
    }
  } finally {
    backend.close();
  }
});

Deno.test("pool: without a client (a health probe), v1 names the connection's own ends, v2 is LOCAL", async () => {
  const backend = recordingBackend();
  try {
    const v1 = new ConnectionPool("127.0.0.1", backend.port, false, {
      connectTimeout: 5_000,
      idleTimeout: 60_000,
      proxyProtocol: "v1",
    });
    const conn = await v1.connect();
    await get(conn);
    const local = conn.raw.localAddr as Deno.NetAddr;
    assert.equal(
      new TextDecoder().decode(backend.preambles[0]),
      `PROXY TCP4 127.0.0.1 127.0.0.1 ${local.port} ${backend.port}\r\n`,
    );
    v1.discard(conn);
    const v2pool = new ConnectionPool("127.0.0.1", backend.port, false, {
      connectTimeout: 5_000,
      idleTimeout: 60_000,
      proxyProtocol: "v2",
    });
    const conn2 = await v2pool.connect();
    await get(conn2);
    assert.deepEqual(backend.preambles[1], v2(0x20, 0x00, []));
    v2pool.discard(conn2);
    // Without proxyProtocol nothing comes before the request; a connection that carried a
    // header (the option was on before a reload) is not handed to anyone else.
    const plain = new ConnectionPool("127.0.0.1", backend.port, false, {
      connectTimeout: 5_000,
      idleTimeout: 60_000,
    });
    const conn3 = await plain.connect();
    await get(conn3);
    assert.deepEqual(backend.preambles[2], new Uint8Array(0));
    plain.release(conn3);
    assert.equal(plain.takeIdle(), conn3);
    conn3.origin = "1.2.3.4 1 5.6.7.8 2";
    plain.release(conn3);
    assert.equal(plain.takeIdle(), undefined);
    plain.retire();
  } finally {
    backend.close();
  }
});

// ---------------------------------------------------------------------------------------------
// HAProxy 2.6 as the peer, both ways.

/** HAProxy's path, found or installed now; without it the HAProxy tests are skipped, saying why. */
const HAPROXY = await tool("haproxy", "haproxy", true);
if (!HAPROXY) {
  console.log("skipping the HAProxy tests: haproxy is missing and could not be installed");
}
const HAVE_HAPROXY = HAPROXY !== undefined;

/** Runs HAProxy in the foreground with `config` until disposed; waits for `port` to listen. */
async function startHaproxy(config: string, port: number) {
  const dir = await Deno.makeTempDir({ prefix: "sluice-haproxy-" });
  const file = `${dir}/haproxy.cfg`;
  await Deno.writeTextFile(
    file,
    "global\n  maxconn 256\ndefaults\n  timeout connect 5s\n  timeout client 30s\n" +
      "  timeout server 30s\n" + config,
  );
  const child = new Deno.Command(HAPROXY!, {
    args: ["-db", "-f", file],
    stdout: "piped",
    stderr: "piped",
  })
    .spawn();
  let output = "";
  const collect = async (stream: ReadableStream<Uint8Array>) => {
    for await (const chunk of stream.pipeThrough(new TextDecoderStream())) output += chunk;
  };
  const done = Promise.all([collect(child.stdout), collect(child.stderr)]);
  const deadline = Date.now() + WAIT;
  for (;;) {
    try {
      (await Deno.connect({ hostname: "127.0.0.1", port })).close();
      break;
    } catch {
      if (Date.now() > deadline) {
        child.kill();
        await done;
        throw new Error(`HAProxy did not start:\n${output}`);
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  return {
    get output() {
      return output;
    },
    async [Symbol.asyncDispose]() {
      try {
        child.kill("SIGTERM");
      } catch { /* exited */ }
      await child.status;
      await done;
      await Deno.remove(dir, { recursive: true });
    },
  };
}

for (const option of ["send-proxy", "send-proxy-v2"]) {
  Deno.test({
    name:
      `HAProxy ${option} in front of the listener: the client's own address reaches the handler`,
    ignore: !HAVE_HAPROXY,
  }, async () => {
    const server = whoServer();
    const front = freePort();
    try {
      await using _haproxy = await startHaproxy(
        `frontend f\n  mode tcp\n  bind 127.0.0.1:${front}\n  default_backend b\n` +
          `backend b\n  mode tcp\n  server s 127.0.0.1:${server.addr.port} ${option}\n`,
        front,
      );
      for (let i = 0; i < 2; i++) {
        using client = await RawClient.connect(front);
        const got = await who(client, "", `/${i}`);
        const mine = client.conn.localAddr as Deno.NetAddr;
        // The client as HAProxy saw it, and the address it connected to (HAProxy's frontend).
        assert.deepEqual(got, {
          ip: "127.0.0.1",
          port: mine.port,
          local: `127.0.0.1:${front}`,
          target: `/${i}`,
        });
      }
      assert.deepEqual(server.errors, []);
    } finally {
      await server.shutdown();
    }
  });
}

for (const version of ["v1", "v2"] as const) {
  Deno.test({
    name: `HAProxy accept-proxy behind a ${version} pool: it sees the client sluice names`,
    ignore: !HAVE_HAPROXY,
  }, async () => {
    const port = freePort();
    await using _haproxy = await startHaproxy(
      `frontend f\n  mode http\n  bind 127.0.0.1:${port} accept-proxy\n` +
        `  http-request return status 200 content-type text/plain lf-string ` +
        `"%[src]:%[src_port] %[dst]:%[dst_port]"\n`,
      port,
    );
    const pool = new ConnectionPool("127.0.0.1", port, false, {
      connectTimeout: 5_000,
      idleTimeout: 60_000,
      proxyProtocol: version,
    });
    try {
      for (
        const [client, want] of [
          [addrs("203.0.113.9", 4242, "198.51.100.1", 8443), "203.0.113.9:4242 198.51.100.1:8443"],
          [addrs("2001:db8::9", 5555, "2001:db8::1", 443), "2001:db8::9:5555 2001:db8::1:443"],
        ] as const
      ) {
        const conn = await pool.connect(client);
        await conn.writeJoined("GET / HTTP/1.1\r\nhost: h\r\n\r\n");
        let text = "";
        while (!text.includes(want)) {
          if ((await within(conn.fill(), WAIT, "HAProxy's answer")) === null) break;
          text = new TextDecoder().decode(conn.buf.subarray(conn.start, conn.end));
        }
        assert.match(text, /^HTTP\/1\.1 200/, text);
        assert.ok(text.endsWith(want), text);
        pool.discard(conn);
      }
    } finally {
      pool.retire();
    }
  });
}
