"""Follow a Loki tail over WebSocket with the `websockets` client, as Grafana's live tail does.

usage: loki_tail.py WS_URL N SECONDS
Prints each frame received (one JSON object per line) until N entries arrived or SECONDS
passed; prints "READY" once the connection is open, so the caller knows when to send.
"""
import asyncio
import json
import sys

import websockets


async def main(url, want, secs):
    got = 0
    async with websockets.connect(url, open_timeout=10) as ws:
        print("READY", flush=True)
        try:
            async with asyncio.timeout(secs):
                while got < want:
                    frame = json.loads(await ws.recv())
                    print(json.dumps(frame), flush=True)
                    got += sum(len(s["values"]) for s in frame.get("streams", []))
        except TimeoutError:
            pass
    return got


if __name__ == "__main__":
    url, want, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    asyncio.run(main(url, want, secs))
