#!/usr/bin/env python3
"""A gRPC client we did not write the stubs of: generates them from proto/pricefeed.proto with
grpcio-tools at run time, subscribes to pricefeed.v1.PriceFeed/Subscribe with `since`, and prints
one line per tick as pricesub does (`btc/USD {"timedate":"…","price":…}`, the exact payload).

When the stream fails (the server restarts, say) it subscribes again, with `since` set to the
oldest of the last timedates it printed per currency, and skips what it already printed, so the
output has every tick once. Exits 0 after COUNT ticks.

usage: grpc_sub.py HOST:PORT SINCE COUNT
"""
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import grpc
from grpc_tools import protoc

PROTO = Path(__file__).resolve().parents[2] / "proto" / "pricefeed.proto"
TOPICS = {"USD": "btc/USD", "EUR": "btc/EUR"}


def generate(out):
    include = str(Path(protoc.__file__).parent / "_proto")
    status = protoc.main([
        "grpc_tools.protoc", f"-I{PROTO.parent}", f"-I{include}",
        f"--python_out={out}", f"--grpc_python_out={out}", str(PROTO),
    ])
    if status != 0:
        sys.exit(f"protoc failed on {PROTO}")
    sys.path.insert(0, out)


def instant(timedate):
    return datetime.fromisoformat(timedate.replace("Z", "+00:00"))


def main():
    target, since, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    with tempfile.TemporaryDirectory() as out:
        generate(out)
        import pricefeed_pb2
        import pricefeed_pb2_grpc

        last = {}
        printed = 0
        while printed < count:
            # Until every currency has printed a tick, the first `since` still holds for the
            # others.
            if len(last) == len(TOPICS):
                since = min(last.values(), key=instant)
            try:
                with grpc.insecure_channel(target) as channel:
                    stub = pricefeed_pb2_grpc.PriceFeedStub(channel)
                    request = pricefeed_pb2.SubscribeRequest(since=since)
                    for event in stub.Subscribe(request):
                        kind = event.WhichOneof("event")
                        if kind == "gap":
                            g = event.gap
                            print(f"gap {g.currency} {getattr(g, 'from')} {g.until} {g.reason}",
                                  file=sys.stderr, flush=True)
                            continue
                        if kind == "status":
                            print("live", file=sys.stderr, flush=True)
                            continue
                        tick = event.tick
                        seen = last.get(tick.currency)
                        if seen is not None and instant(tick.timedate) <= instant(seen):
                            continue
                        print(f'{TOPICS[tick.currency]} {{"timedate":"{tick.timedate}","price":{tick.price}}}',
                              flush=True)
                        last[tick.currency] = tick.timedate
                        printed += 1
                        if printed >= count:
                            return
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.INVALID_ARGUMENT:
                    sys.exit(f"refused: {e.code().name}: {e.details()}")
                print(f"stream ended: {e.code().name}: {e.details()}; resuming",
                      file=sys.stderr, flush=True)
                time.sleep(0.5)


if __name__ == "__main__":
    main()
