"""gRPC's own xDS client and a plain gRPC server, for the proxyless test (tests/grpc_xds.rs).

  grpc_xds.py serve PORT NAME     serve echo.Echo/Say on 127.0.0.1:PORT, answering "NAME:<request>"
  grpc_xds.py call TARGET COUNT   call TARGET (e.g. xds:///echo-grpc) COUNT times, print each answer

The xDS client is configured by the file named in GRPC_XDS_BOOTSTRAP.
"""
import sys
from concurrent import futures

import grpc


def serve(port: int, name: str) -> None:
    def say(request: bytes, context) -> bytes:
        return name.encode() + b":" + request

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    handler = grpc.method_handlers_generic_handler(
        "echo.Echo", {"Say": grpc.unary_unary_rpc_method_handler(say)}
    )
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()


def call(target: str, count: int) -> None:
    with grpc.insecure_channel(target) as channel:
        say = channel.unary_unary("/echo.Echo/Say")
        for _ in range(count):
            print(say(b"hi", timeout=20, wait_for_ready=True).decode(), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(int(sys.argv[2]), sys.argv[3])
    else:
        call(sys.argv[2], int(sys.argv[3]))
