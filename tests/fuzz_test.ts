/**
 * Property-based fuzzing (fast-check) of the wire parsers: the request head parser, the response
 * head parser, the chunked decoder and the PROXY header parser. Valid messages, generated from
 * the grammar, parse to what they were built from however their bytes are split; random
 * mutations of them are parsed or refused with the parser's own error, never anything else,
 * in bounded steps, and never make a caller keep more bytes than the limits allow. A few
 * seconds in all.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import {
  ChunkedDecoder,
  findHeadEnd,
  MAX_CHUNK_LINE,
  ParseError,
  parseResponseHead,
} from "../lib/http1/wire.ts";
import {
  encodeProxyV1,
  encodeProxyV2,
  parseProxyHeader,
  ProxyProtocolError,
} from "../lib/http1/proxy_protocol.ts";
import { parseRequestHead, RequestError, validHost } from "../lib/listener/request.ts";
import { serve, textReply } from "../lib/listener/server.ts";
import { RawClient, within } from "./proxy_helpers.ts";

const RUNS = 300;

// ---------------------------------------------------------------------------------------------
// Grammar-built arbitraries.

const TCHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
const token = (max = 12) =>
  fc.string({ unit: fc.constantFrom(...TCHARS), minLength: 1, maxLength: max });
/** field-content: VCHAR and obs-text, with SP/HTAB inside but not at the edges. */
const fieldValue = fc.array(
  fc.oneof(
    { weight: 8, arbitrary: fc.integer({ min: 0x21, max: 0x7e }) },
    { weight: 1, arbitrary: fc.integer({ min: 0x80, max: 0xff }) },
    { weight: 2, arbitrary: fc.constantFrom(0x20, 0x09) },
  ),
  { maxLength: 30 },
).map((codes) => {
  let text = String.fromCharCode(...codes);
  while (/^[ \t]/.test(text)) text = text.slice(1);
  while (/[ \t]$/.test(text)) text = text.slice(0, -1);
  return text;
});
/** Header names with no meaning to the parser (those are generated on purpose). */
const plainName = token().filter((n) =>
  !["host", "content-length", "transfer-encoding", "connection", "expect"].includes(
    n.toLowerCase(),
  )
);
const PATH_CHARS = "abcXYZ019-._~!$&'()*+,;=:@/%?";
const host = fc.tuple(
  fc.string({ unit: fc.constantFrom(..."abcdefghijklmnopqrstuvwxyz0123456789-."), minLength: 1 }),
  fc.option(fc.integer({ min: 0, max: 65535 }), { nil: undefined }),
).map(([name, port]) => port === undefined ? name : `${name}:${port}`);

interface Built {
  bytes: Uint8Array;
  method: string;
  target: string;
  minor: number;
  host: string | undefined;
  names: string[];
  values: string[];
  length: number;
  chunked: boolean;
}

const latin1 = (text: string) => Uint8Array.from(text, (c) => c.charCodeAt(0));

/** A valid request head (CRLFCRLF included), with what parsing it must give. */
const request = fc.record({
  method: token(8).filter((m) => m !== "CONNECT"),
  path: fc.string({ unit: fc.constantFrom(...PATH_CHARS), maxLength: 40 }),
  minor: fc.constantFrom(0, 1),
  host,
  fields: fc.array(fc.tuple(plainName, fieldValue), { maxLength: 12 }),
  framing: fc.constantFrom("none", "length", "chunked"),
  length: fc.nat({ max: 100_000 }),
}).map((r): Built => {
  const names: string[] = [], values: string[] = [];
  if (r.minor === 1) names.push("Host"), values.push(r.host);
  for (const [n, v] of r.fields) names.push(n), values.push(v);
  const chunked = r.framing === "chunked" && r.minor === 1;
  const length = r.framing === "length" ? r.length : -1;
  if (chunked) names.push("Transfer-Encoding"), values.push("chunked");
  if (length !== -1) names.push("Content-Length"), values.push(String(length));
  const target = "/" + r.path;
  const text = `${r.method} ${target} HTTP/1.${r.minor}\r\n` +
    names.map((n, i) => `${n}: ${values[i]}\r\n`).join("") + "\r\n";
  return {
    bytes: latin1(text),
    method: r.method,
    target,
    minor: r.minor,
    host: r.minor === 1 ? r.host : undefined,
    names,
    values,
    length,
    chunked,
  };
});

/** Split points for a message of `n` bytes: where a reader's successive reads end. */
const cuts = fc.array(fc.nat(), { maxLength: 8 });

function readEnds(n: number, points: number[]): number[] {
  const ends = [...new Set(points.map((p) => (n === 0 ? 0 : p % n)).filter((p) => p > 0))];
  return [...ends.sort((a, b) => a - b), n];
}

/**
 * Finds the end of the head the way the listener and the upstream client do: after each read,
 * resuming 3 bytes before what was already scanned.
 */
function headEndIncrementally(bytes: Uint8Array, points: number[]): number {
  let scanned = 0;
  for (const end of readEnds(bytes.length, points)) {
    const found = findHeadEnd(bytes, scanned, end);
    if (found !== -1) return found;
    scanned = Math.max(0, end - 3);
  }
  return -1;
}

/** Applies byte edits (replace, insert, delete) to a copy of `bytes`. */
const mutations = fc.array(
  fc.record({
    at: fc.nat(),
    op: fc.constantFrom("set", "insert", "delete"),
    byte: fc.oneof(
      fc.constantFrom(0, 9, 10, 13, 32, 34, 44, 58, 59, 61, 92, 127, 0xa0, 0xff),
      fc.integer({ min: 0, max: 255 }),
    ),
  }),
  { minLength: 1, maxLength: 6 },
);

function mutate(bytes: Uint8Array, edits: { at: number; op: string; byte: number }[]): Uint8Array {
  const out = [...bytes];
  for (const { at, op, byte } of edits) {
    const i = out.length === 0 ? 0 : at % (out.length + (op === "insert" ? 1 : 0));
    if (op === "set" && out.length) out[i] = byte;
    else if (op === "insert") out.splice(i, 0, byte);
    else if (out.length) out.splice(i, 1);
  }
  return Uint8Array.from(out);
}

// ---------------------------------------------------------------------------------------------
// Request heads.

Deno.test("fuzz: valid request heads parse to what they were built from, however split", () => {
  fc.assert(
    fc.property(request, cuts, (built, points) => {
      const end = headEndIncrementally(built.bytes, points);
      assert.equal(end, built.bytes.length);
      const req = parseRequestHead(built.bytes.subarray(0, end - 2), "127.0.0.1", 1);
      assert.equal(req.method, built.method);
      assert.equal(req.target, built.target);
      assert.equal(req.minor, built.minor);
      assert.equal(req.host, built.host);
      assert.deepEqual(req.names, built.names);
      assert.deepEqual(req.values, built.values);
      assert.equal(req.length, built.length);
      assert.equal(req.chunked, built.chunked);
    }),
    { numRuns: RUNS },
  );
});

Deno.test("fuzz: mutated request heads are parsed consistently or refused with a RequestError", () => {
  const statuses = new Set([400, 501, 505]);
  fc.assert(
    fc.property(request, mutations, (built, edits) => {
      const bytes = mutate(built.bytes, edits);
      const end = findHeadEnd(bytes, 0, bytes.length);
      if (end === -1) return; // the listener would wait for more (or refuse a bare LF)
      let req;
      try {
        req = parseRequestHead(bytes.subarray(0, end - 2), "127.0.0.1", 1);
      } catch (err) {
        assert.ok(err instanceof RequestError, `threw ${err}`);
        assert.ok(statuses.has(err.status), `status ${err.status}: ${err.message}`);
        return;
      }
      // Whatever was accepted is well-formed.
      assert.match(req.method, /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/);
      assert.ok(req.target === "*" || req.target.startsWith("/"), req.target);
      assert.ok(!req.target.includes("#"), req.target);
      assert.ok(!(req.chunked && req.length !== -1), "two framings");
      assert.ok(req.minor === 0 || req.minor === 1);
      if (req.minor === 1) assert.ok(req.host !== undefined && validHost(req.host), req.host);
      assert.equal(req.names.length, req.values.length);
      let kept = req.target.length;
      for (let i = 0; i < req.names.length; i++) {
        assert.doesNotMatch(req.values[i], /[\0\r\n]|^[ \t]|[ \t]$/, req.values[i]);
        kept += req.names[i].length + req.values[i].length;
      }
      // Nothing retained beyond the head itself.
      assert.ok(kept <= end, `${kept} bytes kept from a ${end}-byte head`);
    }),
    { numRuns: RUNS * 3 },
  );
});

Deno.test("fuzz: requests split across TCP writes reach a real listener intact", async () => {
  const server = serve({
    hostname: "127.0.0.1",
    port: 0,
    timeouts: { header: 10_000, idle: 10_000, client: 10_000 },
    handler: async (req) => {
      let body = 0;
      if (req.body) { for await (const piece of req.body) body += piece.length; }
      return textReply(
        200,
        JSON.stringify({ target: req.target, names: req.names, values: req.values, body }),
      );
    },
    onError: () => {},
  });
  try {
    await fc.assert(
      fc.asyncProperty(request, cuts, async (built, points) => {
        // The body, if any, as it was declared: raw bytes or a few chunks.
        const size = built.length > 0 ? built.length % 3000 : 0;
        const body = built.chunked
          ? "3;x=y\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\n\r\n"
          : "b".repeat(size);
        const values = built.values.map((v, i) =>
          built.names[i] === "Content-Length" ? String(size) : v
        );
        const head = `${built.method} ${built.target} HTTP/1.1\r\n` +
          (built.host === undefined ? "Host: h\r\n" : "") +
          built.names.map((n, i) => `${n}: ${values[i]}\r\n`).join("") + "\r\n";
        const wire = latin1(head + body);
        using client = await RawClient.connect(server.addr.port);
        let from = 0;
        for (const to of readEnds(wire.length, points)) {
          await client.send(wire.subarray(from, to));
          from = to;
        }
        const res = await within(
          client.readResponse(built.method === "HEAD" ? "HEAD" : "GET"),
          15_000,
          "the response",
        );
        assert.equal(res.status, 200, res.head);
        if (built.method === "HEAD") return;
        const got = JSON.parse(String.fromCharCode(...res.body)); // one character per byte
        assert.equal(got.target, built.target);
        assert.deepEqual(
          got.values,
          (built.host === undefined ? ["h"] : []).concat(values),
        );
        assert.equal(got.body, built.chunked ? 19 : size);
      }),
      { numRuns: 40 },
    );
  } finally {
    await server.shutdown();
  }
});

// ---------------------------------------------------------------------------------------------
// Response heads.

const response = fc.record({
  minor: fc.constantFrom(0, 1),
  status: fc.integer({ min: 100, max: 599 }),
  reason: fieldValue,
  fields: fc.array(
    fc.tuple(
      plainName.filter((n) => !/^(keep-alive|proxy-connection|te|trailer|upgrade)$/i.test(n)),
      fieldValue,
    ),
    { maxLength: 12 },
  ),
  framing: fc.constantFrom("none", "length", "chunked"),
  length: fc.nat({ max: 1_000_000 }),
}).map((r) => {
  const fields = [...r.fields];
  if (r.framing === "length") fields.push(["Content-Length", String(r.length)]);
  if (r.framing === "chunked") fields.push(["Transfer-Encoding", "chunked"]);
  const text = `HTTP/1.${r.minor} ${r.status} ${r.reason}\r\n` +
    fields.map(([n, v]) => `${n}: ${v}\r\n`).join("") + "\r\n";
  return { ...r, plain: r.fields, bytes: latin1(text) };
});

Deno.test("fuzz: valid response heads parse to what they were built from, however split", () => {
  fc.assert(
    fc.property(response, cuts, (built, points) => {
      const end = headEndIncrementally(built.bytes, points);
      assert.equal(end, built.bytes.length);
      const head = parseResponseHead(built.bytes.subarray(0, end - 2), "GET");
      assert.equal(head.status, built.status);
      assert.equal(head.reason, built.reason);
      assert.deepEqual(head.headers, built.plain);
      assert.equal(head.size, built.bytes.length);
      const bodiless = built.status < 200 || built.status === 204 || built.status === 304;
      const expected = bodiless || (built.framing === "length" && built.length === 0)
        ? "none"
        : built.framing === "none"
        ? "close"
        : built.framing;
      assert.equal(head.framing, expected);
    }),
    { numRuns: RUNS },
  );
});

Deno.test("fuzz: mutated response heads are parsed or refused with a ParseError only", () => {
  fc.assert(
    fc.property(response, mutations, fc.constantFrom("GET", "HEAD"), (built, edits, method) => {
      const bytes = mutate(built.bytes, edits);
      const end = findHeadEnd(bytes, 0, bytes.length);
      if (end === -1) return;
      try {
        const head = parseResponseHead(bytes.subarray(0, end - 2), method);
        assert.ok(head.status >= 100 && head.status <= 599);
        assert.ok(head.framing !== "length" || head.length > 0);
        for (const [name, value] of head.headers) {
          assert.doesNotMatch(name, /^(content-length|transfer-encoding|connection)$/i);
          assert.doesNotMatch(value, /[\0\r\n]/);
        }
      } catch (err) {
        assert.ok(err instanceof ParseError, `threw ${err}`);
      }
    }),
    { numRuns: RUNS * 3 },
  );
});

// ---------------------------------------------------------------------------------------------
// Chunked bodies.

const extension = fc.tuple(
  fc.constantFrom("", " ", "\t "),
  token(6),
  fc.option(
    fc.oneof(
      token(6),
      fc.string({ unit: fc.constantFrom(..."ab ;=,\t\xe9"), maxLength: 6 }).map((v) => `"${v}"`),
    ),
    { nil: undefined },
  ),
).map(([bws, name, value]) => `${bws};${name}${value === undefined ? "" : "=" + value}`);

const chunkedBody = fc.record({
  chunks: fc.array(fc.uint8Array({ minLength: 1, maxLength: 300 }), { maxLength: 8 }),
  extensions: fc.array(fc.array(extension, { maxLength: 2 }), { maxLength: 9 }),
  trailers: fc.array(fc.tuple(plainName, fieldValue), { maxLength: 3 }),
  upper: fc.boolean(),
}).map(({ chunks, extensions, trailers, upper }) => {
  const parts: Uint8Array[] = [];
  chunks.forEach((chunk, i) => {
    const size = chunk.length.toString(16);
    parts.push(latin1(`${upper ? size.toUpperCase() : size}${(extensions[i] ?? []).join("")}\r\n`));
    parts.push(chunk, latin1("\r\n"));
  });
  parts.push(
    latin1(
      `0${(extensions[chunks.length] ?? []).join("")}\r\n` +
        trailers.map(([n, v]) => `${n}: ${v}\r\n`).join("") + "\r\n",
    ),
  );
  const wire = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) wire.set(p, (at += p.length) - p.length);
  const data = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
  at = 0;
  for (const c of chunks) data.set(c, (at += c.length) - c.length);
  return { wire, data };
});

/**
 * Decodes `wire` as the body readers do, reads ending at `points`. Checks on the way that the
 * decoder always makes progress and never leaves the caller holding more than a framing
 * line's worth of bytes. Returns the data, where the body ended (-1 if it did not), and steps.
 */
function decode(wire: Uint8Array, points: number[]) {
  const decoder = new ChunkedDecoder();
  const ends = readEnds(wire.length, points);
  const out: number[] = [];
  let pos = 0;
  let k = 0;
  let steps = 0;
  while (!decoder.done) {
    assert.ok(++steps <= 4 * wire.length + 20, "the decoder stopped making progress");
    const end = ends[k];
    pos = decoder.advance(wire, pos, end);
    if (decoder.remaining > 0 && pos < end) {
      const take = Math.min(decoder.remaining, end - pos);
      for (let i = pos; i < pos + take; i++) out.push(wire[i]);
      decoder.remaining -= take;
      pos += take;
      continue;
    }
    if (decoder.done) break;
    // Waiting for more: what the caller must keep is bounded by the framing-line limit.
    assert.ok(end - pos <= MAX_CHUNK_LINE, `${end - pos} framing bytes held`);
    if (k === ends.length - 1) return { data: Uint8Array.from(out), used: -1, steps };
    k++;
  }
  return { data: Uint8Array.from(out), used: pos, steps };
}

Deno.test("fuzz: valid chunked bodies decode to their data, however split", () => {
  fc.assert(
    fc.property(chunkedBody, cuts, ({ wire, data }, points) => {
      const withNext = new Uint8Array(wire.length + 4);
      withNext.set(wire);
      withNext.set(latin1("GET "), wire.length); // the next request: not part of the body
      const got = decode(withNext, points);
      assert.deepEqual(got.data, data);
      assert.equal(got.used, wire.length);
    }),
    { numRuns: RUNS },
  );
});

Deno.test("fuzz: mutated chunked bodies decode or fail with a ParseError, in bounded steps", () => {
  fc.assert(
    fc.property(chunkedBody, mutations, cuts, ({ wire }, edits, points) => {
      try {
        decode(mutate(wire, edits), points);
      } catch (err) {
        assert.ok(err instanceof ParseError, `threw ${err}`);
      }
    }),
    { numRuns: RUNS * 3 },
  );
});

Deno.test("fuzz: endless framing lines and trailers are cut off at the limits", () => {
  fc.assert(
    fc.property(
      fc.constantFrom("5;a=", "0\r\nX-A: ", "0\r\n", "1;"),
      fc.integer({ min: 70, max: 126 }),
      cuts,
      (prefix, filler, points) => {
        const wire = latin1(prefix + String.fromCharCode(filler).repeat(70 * 1024));
        assert.throws(() => decode(wire, points), (err: Error) => err instanceof ParseError);
      },
    ),
    { numRuns: 50 },
  );
});

// ---------------------------------------------------------------------------------------------
// PROXY headers.

const ipv4 = fc.tuple(fc.nat(255), fc.nat(255), fc.nat(255), fc.nat(255)).map((p) => p.join("."));
const ipv6 = fc.array(fc.nat(0xffff), { minLength: 8, maxLength: 8 }).map((g) =>
  g.map((x) => x.toString(16)).join(":")
);
const proxyAddresses = fc.oneof(
  fc.tuple(ipv4, ipv4),
  fc.tuple(ipv6, ipv6),
).chain(([src, dst]) =>
  fc.tuple(fc.nat(65535), fc.nat(65535)).map(([sport, dport]) => ({
    source: { ip: src, port: sport },
    destination: { ip: dst, port: dport },
  }))
);

Deno.test("fuzz: PROXY headers round-trip, and mutations fail with ProxyProtocolError only", () => {
  fc.assert(
    fc.property(
      proxyAddresses,
      fc.constantFrom(1, 2),
      mutations,
      (addresses, version, edits) => {
        const bytes = version === 1 ? encodeProxyV1(addresses) : encodeProxyV2(addresses);
        const header = parseProxyHeader(bytes, 0, bytes.length);
        assert.equal(header?.size, bytes.length);
        const again = version === 1
          ? encodeProxyV1(header!.addresses)
          : encodeProxyV2(header!.addresses);
        assert.deepEqual(again, bytes);
        const mutated = mutate(bytes, edits);
        for (let end = 0; end <= mutated.length; end++) {
          try {
            const h = parseProxyHeader(mutated, 0, end);
            if (h) {
              assert.ok(h.size <= end);
              break;
            }
          } catch (err) {
            assert.ok(err instanceof ProxyProtocolError, `threw ${err}`);
            break;
          }
        }
      },
    ),
    { numRuns: RUNS },
  );
});
