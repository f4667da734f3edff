/** What the client gets when a backend fails, and that the balancer keeps serving afterwards. */
import assert from "node:assert/strict";
import { startBackend } from "../backend.ts";
import { backendUrl, startBackends, startTestBalancer, waitFor } from "./helpers.ts";
import { RawClient, rawRequest, scriptedBackend, type ScriptedRequest } from "./proxy_helpers.ts";

const OK = { reply: "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" };

/** Waits until every backend of the balancer has had its start-up probe. */
async function probed(lb: Awaited<ReturnType<typeof startTestBalancer>>): Promise<void> {
  await waitFor(
    () => lb.balancer.pool.backends.every((b) => b.lastProbe !== undefined),
    "the start-up health probes",
  );
}

/** GET `path` through the balancer: status and body text. */
async function get(url: string, path = "/"): Promise<{ status: number; text: string }> {
  const res = await fetch(url + path);
  return { status: res.status, text: await res.text() };
}

Deno.test("connection refused gives 502 without retries, and service resumes when the backend is back", async () => {
  let backend = await startBackend({ port: 0 });
  const url = backendUrl(backend);
  try {
    await using lb = await startTestBalancer({ backends: [{ url }], retries: 0 });
    await probed(lb);
    await backend.shutdown(); // dies between two health probes
    assert.deepEqual(await get(lb.url), { status: 502, text: "Bad Gateway" });
    assert.ok(
      lb.logs.some((l) => l.includes(`upstream ${url} failed: connection refused`)),
      lb.logs.join("\n"),
    );
    assert.deepEqual(await get(lb.url), { status: 502, text: "Bad Gateway" });

    backend = await startBackend({ port: backend.port });
    const again = await get(lb.url);
    assert.equal(again.status, 200);
    assert.equal(again.text, `Hello from backend server on port: ${backend.port}\n`);
  } finally {
    await backend.shutdown();
  }
});

Deno.test("with one of two backends refusing connections, every request succeeds via retry", async () => {
  const [dead, alive] = await startBackends(2);
  try {
    await using lb = await startTestBalancer({
      backends: [{ url: backendUrl(dead) }, { url: backendUrl(alive) }],
    });
    await probed(lb);
    await dead.shutdown();
    for (let i = 0; i < 4; i++) {
      assert.deepEqual(await get(lb.url), {
        status: 200,
        text: `Hello from backend server on port: ${alive.port}\n`,
      });
    }
    const failures = lb.logs.filter((l) =>
      l.includes(`upstream ${backendUrl(dead)} failed: connection refused`)
    );
    assert.ok(failures.length >= 1, lb.logs.join("\n"));
  } finally {
    await alive.shutdown();
  }
});

const MALFORMED: { name: string; reply: string; cause: RegExp; ignore?: boolean }[] = [
  {
    name: "a malformed status line",
    reply: "HTTP/1.1 2OO OK\r\nContent-Length: 2\r\n\r\nok",
    cause: /malformed status line/,
  },
  {
    name: "a space before a header's colon",
    reply: "HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\nok",
    cause: /invalid header name|malformed header/,
  },
  {
    name: "conflicting Content-Length values",
    reply: "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
    cause: /conflicting content-length/,
  },
  {
    name: "an obs-fold continuation line",
    reply: "HTTP/1.1 200 OK\r\nX-Folded: a\r\n b\r\nContent-Length: 2\r\n\r\nok",
    cause: /malformed header line|fold/,
  },
  {
    name: "both Transfer-Encoding and Content-Length",
    reply:
      "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    cause: /both transfer-encoding and content-length/,
  },
  {
    name: "bare LF line endings",
    reply: "HTTP/1.1 200 OK\nContent-Length: 2\n\nok",
    cause: /bare (CR or )?LF/,
  },
];

for (const { name, reply, cause, ignore } of MALFORMED) {
  Deno.test({
    name: `a response head with ${name} gives 502 and its connection is never reused`,
    ignore,
  }, async () => {
    let bad: ScriptedRequest["conn"] | undefined;
    const backend = scriptedBackend((req) => {
      if (req.target !== "/bad") return OK;
      bad = req.conn;
      return { reply }; // and keep the connection open: the balancer must drop it
    });
    try {
      await using lb = await startTestBalancer({
        backends: [{ url: backend.url }],
        timeouts: { response: "5s" }, // a balancer waiting for more would answer 504
      });
      const started = Date.now();
      assert.deepEqual(await get(lb.url, "/bad"), { status: 502, text: "Bad Gateway" });
      assert.ok(Date.now() - started < 4_000, "the malformed head was not rejected at once");
      const line = lb.logs.find((l) => l.includes(`upstream ${backend.url} failed:`));
      assert.ok(line, lb.logs.join("\n"));
      assert.match(line, cause);

      await waitFor(() => bad!.closedByPeer, "the balancer to close the bad connection");
      for (let i = 0; i < 3; i++) {
        assert.deepEqual(await get(lb.url, "/ok"), { status: 200, text: "ok" });
      }
      assert.equal(bad!.requests.length, 1, "the bad connection carried another request");
    } finally {
      await backend.close();
    }
  });
}

Deno.test("no response head within timeouts.response gives 504, and the balancer keeps serving", async () => {
  let silent: ScriptedRequest["conn"] | undefined;
  const backend = scriptedBackend((req) => {
    if (req.target !== "/slow") return OK;
    silent = req.conn;
    return { then: "hang" };
  });
  try {
    await using lb = await startTestBalancer({
      backends: [{ url: backend.url }],
      timeouts: { response: "300ms" },
    });
    const started = Date.now();
    assert.deepEqual(await get(lb.url, "/slow"), { status: 504, text: "Gateway Timeout" });
    const elapsed = Date.now() - started;
    assert.ok(elapsed >= 290, `answered 504 after ${elapsed}ms`);
    assert.ok(
      lb.logs.some((l) => l.includes(`upstream ${backend.url} failed: no response within 300ms`)),
      lb.logs.join("\n"),
    );
    await waitFor(() => silent!.closedByPeer, "the balancer to close the silent connection");
    assert.deepEqual(await get(lb.url, "/ok"), { status: 200, text: "ok" });
  } finally {
    await backend.close();
  }
});

Deno.test({
  name: "an upload that takes longer than timeouts.response is not cut off with 504",
  async fn() {
    const backend = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, async (req) => {
      const text = req.body ? await req.text().catch(() => "") : "";
      return new Response(`got ${text.length} bytes`);
    });
    try {
      await using lb = await startTestBalancer({
        backends: [{ url: `http://127.0.0.1:${backend.addr.port}` }],
        timeouts: { response: "300ms" },
      });
      using client = await RawClient.connect(lb.balancer.addr.port);
      await client.send(
        "POST /upload HTTP/1.1\r\nHost: lb.test\r\nTransfer-Encoding: chunked\r\n\r\n",
      );
      // A slow client: four pieces 200 ms apart, ~800 ms in all; the backend answers at once.
      for (let i = 0; i < 4; i++) {
        await client.send("5\r\nhello\r\n");
        await new Promise((r) => setTimeout(r, 200));
      }
      await client.send("0\r\n\r\n");
      const res = await client.readResponse();
      assert.equal(res.status, 200, res.text());
      assert.equal(res.text(), "got 20 bytes");
    } finally {
      await backend.shutdown();
    }
  },
});

/**
 * A backend answers `/cut` with `reply` and closes: fetch's body rejects, a raw client
 * sees the connection end early (`wire`), `logged(backendUrl)` finds the balancer's log
 * line, and the next request is answered normally.
 */
async function assertCutShort(
  reply: string,
  wire: RegExp,
  logged: (backendUrl: string) => (line: string) => boolean,
) {
  const backend = scriptedBackend((req) => {
    if (req.target !== "/cut") return OK;
    return { reply, then: "close" };
  });
  try {
    await using lb = await startTestBalancer({ backends: [{ url: backend.url }] });
    const res = await fetch(`${lb.url}/cut`);
    assert.equal(res.status, 200);
    await assert.rejects(res.arrayBuffer());

    using client = await RawClient.connect(lb.balancer.addr.port);
    await client.send("GET /cut HTTP/1.1\r\nHost: lb.test\r\n\r\n");
    await assert.rejects(client.readResponse(), wire);

    await waitFor(() => lb.logs.some(logged(backend.url)), "the cut-short log line");
    assert.deepEqual(await get(lb.url, "/ok"), { status: 200, text: "ok" });
  } finally {
    await backend.close();
  }
}

Deno.test("a Content-Length body cut short by the backend is never presented as complete", async () => {
  // On the wire: the client sees the declared length and then the connection ends early.
  await assertCutShort(
    `HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n${"x".repeat(500)}`,
    /body bytes missing|closed/,
    (url) => (l) =>
      l.includes(
        `response from ${url} cut short: backend closed the connection with 500 bytes left`,
      ),
  );
});

Deno.test("a chunked body without its last chunk is never presented as complete", async () => {
  // On the wire: no terminating 0-size chunk ever arrives.
  await assertCutShort(
    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
    /closed/,
    (url) => (l) =>
      new RegExp(`response from ${url} cut short: backend closed the connection`).test(l),
  );
});

Deno.test("a request to a dead backend with a body is answered 502, not hung", async () => {
  const backend = await startBackend({ port: 0 });
  const url = backendUrl(backend);
  await using lb = await startTestBalancer({ backends: [{ url }], retries: 0 });
  await probed(lb);
  await backend.shutdown();
  const res = await rawRequest(
    lb.balancer.addr.port,
    "POST /echo HTTP/1.1\r\nHost: lb.test\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
  );
  assert.equal(res.status, 502);
  assert.equal(res.text(), "Bad Gateway");
});
