/** Bodies stream through the balancer in both directions, with bounded memory. */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { startTestBalancer, waitFor } from "./helpers.ts";
import {
  block,
  blocksDigest,
  RawClient,
  rss,
  scriptedBackend,
  spawnBalancer,
  within,
} from "./proxy_helpers.ts";

const encoder = new TextEncoder();
const decoder = new TextDecoder();

Deno.test("the client gets the first response chunk before the backend sent the last", async () => {
  const release = Promise.withResolvers<void>();
  let released = false;
  const backend = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, (req) => {
    if (new URL(req.url).pathname !== "/stream") return new Response("ok");
    const body = new ReadableStream<Uint8Array>({
      async start(controller) {
        controller.enqueue(encoder.encode("first chunk;"));
        await release.promise;
        controller.enqueue(encoder.encode("the rest"));
        controller.close();
      },
    });
    return new Response(body);
  });
  try {
    await using lb = await startTestBalancer({
      backends: [{ url: `http://127.0.0.1:${backend.addr.port}` }],
    });
    const res = await within(fetch(`${lb.url}/stream`), 10_000, "the response head");
    assert.equal(res.status, 200);
    const reader = res.body!.getReader();
    const first = await within(reader.read(), 10_000, "the first chunk while the backend waits");
    assert.equal(released, false);
    assert.equal(decoder.decode(first.value), "first chunk;");
    released = true;
    release.resolve();
    let rest = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      rest += decoder.decode(value, { stream: true });
    }
    assert.equal(rest, "the rest");
  } finally {
    release.resolve();
    await backend.shutdown();
  }
});

Deno.test("a Content-Length response streams too: half arrives before the backend sends the rest", async () => {
  const release = Promise.withResolvers<void>();
  const backend = scriptedBackend(() => ({
    reply: "HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n0123456789",
    more: async (write) => {
      await release.promise;
      await write("abcdefghij");
    },
  }));
  try {
    await using lb = await startTestBalancer({ backends: [{ url: backend.url }] });
    const res = await within(fetch(lb.url), 10_000, "the response head");
    assert.equal(res.headers.get("content-length"), "20");
    const reader = res.body!.getReader();
    const first = await within(reader.read(), 10_000, "the first half while the backend waits");
    assert.equal(decoder.decode(first.value), "0123456789");
    release.resolve();
    let rest = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      rest += decoder.decode(value);
    }
    assert.equal(rest, "abcdefghij");
  } finally {
    release.resolve();
    await backend.close();
  }
});

Deno.test("the backend gets the first chunk of an upload before the client sent the rest", async () => {
  const firstArrived = Promise.withResolvers<string>();
  const backend = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, async (req) => {
    if (!req.body) return new Response("ok");
    let text = "";
    let first = true;
    for await (const chunk of req.body) {
      text += decoder.decode(chunk, { stream: true });
      if (first) firstArrived.resolve(text);
      first = false;
    }
    return Response.json({ text });
  });
  try {
    await using lb = await startTestBalancer({
      backends: [{ url: `http://127.0.0.1:${backend.addr.port}` }],
    });
    using client = await RawClient.connect(lb.balancer.addr.port);
    await client.send(
      "POST /upload HTTP/1.1\r\nHost: lb.test\r\nTransfer-Encoding: chunked\r\n\r\n" +
        "6\r\nfirst;\r\n",
    );
    // The rest is not sent until the backend has the first chunk.
    const seen = await within(firstArrived.promise, 10_000, "the backend to get the first chunk");
    assert.equal(seen, "first;");
    await client.send("8\r\nthe rest\r\n0\r\n\r\n");
    const res = await within(client.readResponse(), 10_000, "the response");
    assert.equal(res.status, 200);
    assert.deepEqual(JSON.parse(res.text()), { text: "first;the rest" });
  } finally {
    firstArrived.resolve("");
    await backend.shutdown();
  }
});

const BLOCK = 64 * 1024;
const BLOCKS = 800; // 50 MiB
const MB = 1024 * 1024;
/** Growth of the balancer's RSS allowed while a 50 MB transfer is held up mid-way. */
const RSS_LIMIT = 40 * MB;
/** The largest size (bytes) the kernel lets a socket buffer autotune to, from tcp_rmem or tcp_wmem. */
async function socketBufferMax(name: "tcp_rmem" | "tcp_wmem"): Promise<number> {
  const out = await new Deno.Command("cat", { args: [`/proc/sys/net/ipv4/${name}`] }).output();
  return Number(decoder.decode(out.stdout).trim().split(/\s+/)[2]) || 0;
}
/**
 * Bytes a streaming proxy may let the sender get ahead by: what the two socket pairs between
 * sender and reader can hold (receive buffers autotune up to tcp_rmem's maximum, 32 MB on some
 * kernels), at least 25 MB, and always short of the whole body. The balancer's own memory is
 * bounded by RSS_LIMIT.
 */
const AHEAD_LIMIT = Math.min(
  BLOCKS * BLOCK,
  Math.max(
    25 * MB,
    2 * ((await socketBufferMax("tcp_rmem")) + (await socketBufferMax("tcp_wmem"))),
  ),
);

/** Polls `get` until it has not changed for `quiet` ms (the transfer is held up); returns the value. */
async function settled(get: () => number, quiet = 500, timeout = 30_000): Promise<number> {
  const deadline = Date.now() + timeout;
  let value = get();
  let since = Date.now();
  while (Date.now() - since < quiet) {
    if (Date.now() > deadline) throw new Error(`still moving after ${timeout}ms (${value})`);
    await new Promise((r) => setTimeout(r, 50));
    if (get() !== value) {
      value = get();
      since = Date.now();
    }
  }
  return value;
}

/** main.ts in front of `backend`, warmed up, with its RSS baseline. */
async function balancerFor(backend: Deno.HttpServer<Deno.NetAddr>) {
  const lb = await spawnBalancer([
    "--host",
    "127.0.0.1",
    "--port",
    "0",
    "--backend",
    `http://127.0.0.1:${backend.addr.port}`,
  ]);
  for (let i = 0; i < 3; i++) {
    const warm = await fetch(`${lb.url}/warm`, { method: "POST", body: block(i, BLOCK) });
    assert.equal(await warm.text(), "ok");
  }
  return { lb, baseline: await rss(lb.pid) };
}

const mb = (n: number) => `${(n / MB).toFixed(1)} MB`;

/** Reads `reader` into `hash` until `until` bytes in all (`length` of them already) or its end. */
async function readHashed(
  reader: ReadableStreamDefaultReader<Uint8Array>,
  hash: ReturnType<typeof createHash>,
  length = 0,
  until = Infinity,
): Promise<number> {
  while (length < until) {
    const { value, done } = await reader.read();
    if (done) break;
    hash.update(value);
    length += value.length;
  }
  return length;
}

Deno.test("a 50 MB download through main.ts streams: a paused client holds the backend back", async () => {
  let produced = 0;
  const backend = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, async (req) => {
    if (new URL(req.url).pathname !== "/download") {
      await req.body?.cancel();
      return new Response("ok");
    }
    let i = 0;
    const body = new ReadableStream<Uint8Array>({
      pull(controller) {
        if (i === BLOCKS) return controller.close();
        controller.enqueue(block(i++, BLOCK));
        produced += BLOCK;
      },
    }, { highWaterMark: 0 });
    return new Response(body, { headers: { "content-length": String(BLOCKS * BLOCK) } });
  });
  try {
    const { lb, baseline } = await balancerFor(backend);
    await using _lb = lb;
    const res = await fetch(`${lb.url}/download`);
    assert.equal(res.status, 200);
    assert.equal(res.headers.get("content-length"), String(BLOCKS * BLOCK));
    const reader = res.body!.getReader();
    const hash = createHash("sha256");
    let length = await readHashed(reader, hash, 0, MB);
    // The client stops reading: a streaming balancer stops reading from the backend too.
    const ahead = await settled(() => produced);
    const grown = (await rss(lb.pid)) - baseline;
    assert.ok(ahead < AHEAD_LIMIT, `the backend got ${mb(ahead)} ahead of a paused client`);
    assert.ok(grown < RSS_LIMIT, `RSS grew by ${mb(grown)} while holding a paused download`);

    length = await readHashed(reader, hash, length);
    assert.deepEqual({ length, sha256: hash.digest("hex") }, blocksDigest(BLOCKS, BLOCK));
  } finally {
    await backend.shutdown();
  }
});

Deno.test("a 50 MB upload through main.ts streams: a paused backend holds the client back", async () => {
  const resume = Promise.withResolvers<void>();
  let consumed = 0;
  const backend = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, async (req) => {
    if (new URL(req.url).pathname !== "/upload" || !req.body) {
      await req.body?.cancel();
      return new Response("ok");
    }
    const hash = createHash("sha256");
    for await (const chunk of req.body) {
      hash.update(chunk);
      consumed += chunk.length;
      if (consumed >= MB) await resume.promise; // stop reading after the first MB
    }
    return Response.json({ length: consumed, sha256: hash.digest("hex") });
  });
  try {
    const { lb, baseline } = await balancerFor(backend);
    await using _lb = lb;
    let pulled = 0;
    let i = 0;
    const body = new ReadableStream<Uint8Array>({
      pull(controller) {
        if (i === BLOCKS) return controller.close();
        controller.enqueue(block(i++, BLOCK));
        pulled += BLOCK;
      },
    }, { highWaterMark: 0 });
    const response = fetch(`${lb.url}/upload`, { method: "POST", body });
    await waitFor(() => consumed >= MB, "the backend to read the first MB");
    // The backend stops reading: a streaming balancer stops reading from the client too.
    const ahead = await settled(() => pulled);
    const grown = (await rss(lb.pid)) - baseline;
    assert.ok(ahead < AHEAD_LIMIT, `the client got ${mb(ahead)} ahead of a paused backend`);
    assert.ok(grown < RSS_LIMIT, `RSS grew by ${mb(grown)} while holding a paused upload`);

    resume.resolve();
    const res = await response;
    assert.equal(res.status, 200);
    assert.deepEqual(await res.json(), blocksDigest(BLOCKS, BLOCK));
  } finally {
    resume.resolve();
    await backend.shutdown();
  }
});

Deno.test("a 50 MB upload with Content-Length arrives intact", async () => {
  const body = new Uint8Array(BLOCKS * BLOCK);
  for (let i = 0; i < BLOCKS; i++) body.set(block(i, BLOCK), i * BLOCK);
  const backend = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, async (req) => {
    if (!req.body) return new Response("ok");
    const hash = createHash("sha256");
    let length = 0;
    for await (const chunk of req.body) {
      hash.update(chunk);
      length += chunk.length;
    }
    return Response.json({
      length,
      sha256: hash.digest("hex"),
      declared: req.headers.get("content-length"),
      chunked: req.headers.get("transfer-encoding"),
    });
  });
  try {
    await using lb = await startTestBalancer({
      backends: [{ url: `http://127.0.0.1:${backend.addr.port}` }],
    });
    const res = await fetch(`${lb.url}/upload`, { method: "PUT", body });
    const got = await res.json();
    assert.deepEqual(got, {
      ...blocksDigest(BLOCKS, BLOCK),
      declared: String(body.length),
      chunked: null,
    });
  } finally {
    await backend.shutdown();
  }
});

Deno.test("uploads through main.ts arrive intact while another is held up by its backend", async () => {
  // Upload pieces are reused once written upstream: a piece handed out again while it is still
  // needed would mix the bytes of one upload into another.
  const resume = Promise.withResolvers<void>();
  let heldRead = 0;
  const backend = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, async (req) => {
    const url = new URL(req.url);
    if (url.pathname !== "/upload" || !req.body) {
      await req.body?.cancel();
      return new Response("ok");
    }
    const held = url.searchParams.has("held");
    const hash = createHash("sha256");
    let length = 0;
    for await (const chunk of req.body) {
      hash.update(chunk);
      length += chunk.length;
      if (held) {
        heldRead = length;
        if (length >= MB) await resume.promise;
      }
    }
    return Response.json({ length, sha256: hash.digest("hex") });
  });
  /** A body of `count` blocks from block `from`, chunked when it has no length. */
  const blocks = (from: number, count: number) => {
    let i = 0;
    return new ReadableStream<Uint8Array>({
      pull(controller) {
        if (i === count) return controller.close();
        controller.enqueue(block(from + i++, BLOCK));
      },
    }, { highWaterMark: 0 });
  };
  const expected = (from: number, count: number) => {
    const hash = createHash("sha256");
    for (let i = 0; i < count; i++) hash.update(block(from + i, BLOCK));
    return { length: count * BLOCK, sha256: hash.digest("hex") };
  };
  try {
    const { lb } = await balancerFor(backend);
    await using _lb = lb;
    const COUNT = 96; // 6 MiB each
    // One upload whose backend stops reading after its first MB, its pieces still in flight.
    const held = fetch(`${lb.url}/upload?held`, { method: "POST", body: blocks(1000, COUNT) });
    await waitFor(() => heldRead >= MB, "the held upload's first MB");
    // Others, with Content-Length (a whole body) and chunked (a stream), run to their end meanwhile.
    const others = await Promise.all([2000, 3000, 4000, 5000].map(async (from) => {
      const body = from % 2000 === 0
        ? new Uint8Array(await new Response(blocks(from, COUNT)).arrayBuffer())
        : blocks(from, COUNT);
      const res = await fetch(`${lb.url}/upload`, { method: "PUT", body });
      return { from, ...(await res.json()) };
    }));
    resume.resolve();
    const last = { from: 1000, ...(await (await held).json()) };
    const results = [...others, last];
    assert.deepEqual(
      results,
      results.map(({ from }) => ({ from, ...expected(from, COUNT) })),
    );
  } finally {
    resume.resolve();
    await backend.shutdown();
  }
});

Deno.test("downloads through main.ts arrive intact while another is held up by its client", async () => {
  // Body pieces are reused once written: a piece handed out again while a write of it still
  // waits for a slow client would mix the bytes of one download into another.
  const produced = new Map<number, number>();
  const backend = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, async (req) => {
    const url = new URL(req.url);
    if (url.pathname !== "/blocks") {
      await req.body?.cancel();
      return new Response("ok");
    }
    const from = Number(url.searchParams.get("from"));
    const count = Number(url.searchParams.get("count"));
    let i = 0;
    const body = new ReadableStream<Uint8Array>({
      pull(controller) {
        if (i === count) return controller.close();
        controller.enqueue(block(from + i++, BLOCK));
        produced.set(from, i * BLOCK);
      },
    }, { highWaterMark: 0 });
    // Without a length Deno.serve sends the body chunked.
    const headers = url.searchParams.has("chunked")
      ? undefined
      : { "content-length": String(count * BLOCK) };
    return new Response(body, { headers });
  });
  /** Reads a download to its end; its length and whether its bytes are the blocks asked for. */
  const check = async (
    reader: ReadableStreamDefaultReader<Uint8Array>,
    from: number,
    count: number,
    hash = createHash("sha256"),
    length = 0,
  ) => {
    length = await readHashed(reader, hash, length);
    const expected = createHash("sha256");
    for (let i = 0; i < count; i++) expected.update(block(from + i, BLOCK));
    return { from, length, intact: hash.digest("hex") === expected.digest("hex") };
  };
  try {
    const { lb } = await balancerFor(backend);
    await using _lb = lb;
    // One download the client stops reading, until the balancer's write to it waits.
    const held = await fetch(`${lb.url}/blocks?from=1000&count=${BLOCKS}`);
    const heldReader = held.body!.getReader();
    const heldHash = createHash("sha256");
    const heldLength = await readHashed(heldReader, heldHash, 0, MB);
    await settled(() => produced.get(1000) ?? 0);
    // Others, with and without Content-Length, run to their end meanwhile.
    const COUNT = 96; // 6 MiB each
    const others = await Promise.all([2000, 3000, 4000, 5000].map(async (from) => {
      const chunked = from % 2000 === 0 ? "&chunked" : "";
      const res = await fetch(`${lb.url}/blocks?from=${from}&count=${COUNT}${chunked}`);
      assert.equal(res.status, 200);
      return check(res.body!.getReader(), from, COUNT);
    }));
    const results = [...others, await check(heldReader, 1000, BLOCKS, heldHash, heldLength)];
    assert.deepEqual(
      results,
      results.map(({ from }) => ({
        from,
        length: (from === 1000 ? BLOCKS : COUNT) * BLOCK,
        intact: true,
      })),
    );
  } finally {
    await backend.shutdown();
  }
});
