#!/usr/bin/python3
"""A real WebSocket peer for tests (Debian's python3-websockets, 10.4 API).

server [--host H] [--port P] [--subprotocols a,b] [--no-compression]
    Echo server. Prints one line `LISTENING <port>` once it listens. Echoes every message as
    received (text as text, binary as binary). Control messages (text):
      "whoami"              -> a JSON text: path, request headers, subprotocol, extensions
      "close:<code>:<why>"  -> the server closes with that code and reason
client --url URL [--messages N] [--seed S] [--subprotocols a,b] [--no-compression]
       [--close-code C] [--max-size BYTES] [--whoami] [--cafile PEM]
    Sends N messages of mixed sizes (text and binary, some up to 256 KiB), checks each echo
    byte-exact and in order, pings once, optionally asks for whoami, then asks the server to
    close with code C (default 4001) and reports what close code and reason arrived. Prints one
    JSON line: {"ok", "sent", "echoed", "mismatches", "bytes", "subprotocol", "extensions",
    "pong", "close_code", "close_reason", "whoami", "error"}. Exits 0 when ok.
"""
import argparse
import asyncio
import json
import random
import ssl
import sys

import websockets


def parse_list(text):
    return [t for t in (text or "").split(",") if t]


async def serve(args):
    async def handler(ws, path=None):
        try:
            async for message in ws:
                if isinstance(message, str) and message == "whoami":
                    await ws.send(json.dumps({
                        "path": path if path is not None else ws.path,
                        "headers": [[k, v] for k, v in ws.request_headers.raw_items()],
                        "subprotocol": ws.subprotocol,
                        "extensions": ws.response_headers.get("Sec-WebSocket-Extensions"),
                    }))
                elif isinstance(message, str) and message.startswith("close:"):
                    _, code, reason = message.split(":", 2)
                    await ws.close(code=int(code), reason=reason)
                    return
                else:
                    await ws.send(message)
        except websockets.ConnectionClosed:
            pass

    server = await websockets.serve(
        handler,
        args.host,
        args.port,
        subprotocols=parse_list(args.subprotocols) or None,
        compression=None if args.no_compression else "deflate",
        max_size=None,
        ping_interval=None,
    )
    port = server.sockets[0].getsockname()[1]
    print(f"LISTENING {port}", flush=True)
    await asyncio.Future()


def make_messages(count, seed):
    rng = random.Random(seed)
    sizes = [0, 1, 2, 125, 126, 127, 65535, 65536, 65537]
    messages = []
    for i in range(count):
        if i < len(sizes) * 2:
            size = sizes[i // 2]
        elif i % 500 == 0:
            size = rng.randint(100_000, 256 * 1024)
        elif i % 10 == 0:
            size = rng.randint(1000, 20_000)
        else:
            size = rng.randint(0, 300)
        if i % 2 == 0:
            # Text: mixed ASCII and multi-byte characters, never a control word.
            alphabet = "abcdefghij KLMNOP 0123456789 éü€𝄞"
            text = "".join(rng.choice(alphabet) for _ in range(size))
            if text == "whoami" or text.startswith("close:"):
                text = "x" + text
            messages.append(text)
        else:
            messages.append(rng.randbytes(size))
    return messages


async def client(args):
    report = {"ok": False, "sent": 0, "echoed": 0, "mismatches": 0, "bytes": 0,
              "subprotocol": None, "extensions": None, "pong": False, "close_code": None,
              "close_reason": None, "whoami": None, "error": None}
    messages = make_messages(args.messages, args.seed)
    tls = None
    if args.url.startswith("wss:"):
        tls = ssl.create_default_context(cafile=args.cafile)
    try:
        async with websockets.connect(
            args.url,
            subprotocols=parse_list(args.subprotocols) or None,
            compression=None if args.no_compression else "deflate",
            max_size=args.max_size,
            ping_interval=None,
            open_timeout=30,
            close_timeout=30,
            ssl=tls,
        ) as ws:
            report["subprotocol"] = ws.subprotocol
            report["extensions"] = ws.response_headers.get("Sec-WebSocket-Extensions")

            async def send_all():
                for message in messages:
                    await ws.send(message)
                    report["sent"] += 1

            sender = asyncio.create_task(send_all())
            for expected in messages:
                got = await ws.recv()
                if type(got) is not type(expected) or got != expected:
                    report["mismatches"] += 1
                report["echoed"] += 1
                report["bytes"] += len(got.encode() if isinstance(got, str) else got)
            await sender
            waiter = await ws.ping(b"sluice-ping")
            await asyncio.wait_for(waiter, 30)
            report["pong"] = True
            if args.whoami:
                await ws.send("whoami")
                report["whoami"] = json.loads(await ws.recv())
            await ws.send(f"close:{args.close_code}:bye from backend")
            try:
                extra = await asyncio.wait_for(ws.recv(), 30)
                report["error"] = f"unexpected message after close request: {extra!r:.80}"
            except websockets.ConnectionClosed:
                pass
            report["close_code"] = ws.close_code
            report["close_reason"] = ws.close_reason
    except Exception as err:  # reported, not raised: the test reads the JSON line
        report["error"] = f"{type(err).__name__}: {err}"
    report["ok"] = (report["error"] is None and report["mismatches"] == 0
                    and report["echoed"] == len(messages) and report["pong"]
                    and report["close_code"] == args.close_code)
    print(json.dumps(report), flush=True)
    return 0 if report["ok"] else 1


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("server")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=0)
    s.add_argument("--subprotocols", default="")
    s.add_argument("--no-compression", action="store_true")
    c = sub.add_parser("client")
    c.add_argument("--url", required=True)
    c.add_argument("--messages", type=int, default=1000)
    c.add_argument("--seed", type=int, default=1)
    c.add_argument("--subprotocols", default="")
    c.add_argument("--no-compression", action="store_true")
    c.add_argument("--close-code", type=int, default=4001)
    c.add_argument("--max-size", type=int, default=16 * 1024 * 1024)
    c.add_argument("--whoami", action="store_true")
    c.add_argument("--cafile", default=None, help="CA certificate (PEM) to trust for wss://")
    args = parser.parse_args()
    if args.mode == "server":
        asyncio.run(serve(args))
    else:
        sys.exit(asyncio.run(client(args)))


if __name__ == "__main__":
    main()
