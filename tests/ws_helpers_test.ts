/** The WebSocket test harness itself (tests/ws_peer.py), client straight to server. */
import assert from "node:assert/strict";
import { runWsClient, startWsEchoServer, wsUnavailable } from "./ws_helpers.ts";

const unavailable = await wsUnavailable();
if (unavailable) console.warn(`skipping WebSocket harness tests: ${unavailable}`);

Deno.test({
  name: "ws harness: 10,000 mixed text and binary messages echo byte-exact with permessage-deflate",
  ignore: unavailable !== undefined,
  async fn() {
    const server = await startWsEchoServer({ subprotocols: ["chat.v2", "chat.v1"] });
    try {
      const report = await runWsClient(server.url + "/chat?room=1", {
        messages: 10_000,
        subprotocols: ["chat.v1"],
        whoami: true,
      });
      assert.equal(report.error, null);
      assert.equal(report.echoed, 10_000);
      assert.equal(report.mismatches, 0);
      assert.ok(report.bytes > 1_000_000, `only ${report.bytes} bytes echoed`);
      assert.equal(report.subprotocol, "chat.v1");
      assert.match(report.extensions ?? "", /permessage-deflate/);
      assert.ok(report.pong);
      assert.equal(report.close_code, 4001);
      assert.equal(report.close_reason, "bye from backend");
      assert.equal(report.whoami?.path, "/chat?room=1");
      assert.ok(report.whoami?.headers.some(([k, v]) => k === "Upgrade" && v === "websocket"));
      assert.ok(report.ok);
    } finally {
      await server.close();
    }
  },
});

Deno.test({
  name: "ws harness: no compression, no subprotocol, a normal close code",
  ignore: unavailable !== undefined,
  async fn() {
    const server = await startWsEchoServer({ compression: false });
    try {
      const report = await runWsClient(server.url, { messages: 200, closeCode: 1000, seed: 7 });
      assert.ok(report.ok, JSON.stringify(report));
      assert.equal(report.extensions, null);
      assert.equal(report.subprotocol, null);
      assert.equal(report.close_code, 1000);
    } finally {
      await server.close();
    }
  },
});

Deno.test({
  name: "ws harness: a client reports a failure instead of throwing when nothing listens",
  ignore: unavailable !== undefined,
  async fn() {
    const probe = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const port = (probe.addr as Deno.NetAddr).port;
    probe.close();
    const report = await runWsClient(`ws://127.0.0.1:${port}/`, { messages: 1 });
    assert.equal(report.ok, false);
    assert.match(report.error ?? "", /refused|Errno|connect/i);
  },
});
