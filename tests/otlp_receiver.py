#!/usr/bin/env python3
"""A small OTLP/HTTP traces receiver for the integration tests.

Listens on 127.0.0.1 (port 0 unless given), prints "listening PORT" on its
first stdout line, decodes each POST /v1/traces body as a real
ExportTraceServiceRequest (opentelemetry-proto, protobuf) and appends one
JSON line per span to the output file: service, trace_id, span_id,
parent_span_id (hex, "" for none), name, kind, start and end (unix nanos),
attributes (string or int values) and the status code. A body that does not
decode is answered 400 and logged on stderr, so the test sees it.

Usage: otlp_receiver.py OUTPUT_JSONL [PORT]
"""

import http.server
import json
import sys

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)


def any_value(v):
    kind = v.WhichOneof("value")
    if kind == "string_value":
        return v.string_value
    if kind == "int_value":
        return v.int_value
    if kind == "bool_value":
        return v.bool_value
    if kind == "double_value":
        return v.double_value
    return None


class Handler(http.server.BaseHTTPRequestHandler):
    out_path = ""

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        req = ExportTraceServiceRequest()
        try:
            if self.path != "/v1/traces":
                raise ValueError(f"unexpected path {self.path}")
            if self.headers.get("Content-Type") != "application/x-protobuf":
                raise ValueError(f"unexpected content type {self.headers.get('Content-Type')}")
            req.ParseFromString(body)
        except Exception as e:  # noqa: BLE001 - any failure is the test's to see
            print(f"otlp_receiver: bad export: {e}", file=sys.stderr, flush=True)
            self.send_response(400)
            self.end_headers()
            return
        lines = []
        for rs in req.resource_spans:
            service = ""
            for kv in rs.resource.attributes:
                if kv.key == "service.name":
                    service = any_value(kv.value)
            for ss in rs.scope_spans:
                for s in ss.spans:
                    lines.append(
                        json.dumps(
                            {
                                "service": service,
                                "scope": ss.scope.name,
                                "trace_id": s.trace_id.hex(),
                                "span_id": s.span_id.hex(),
                                "parent_span_id": s.parent_span_id.hex(),
                                "trace_state": s.trace_state,
                                "name": s.name,
                                "kind": s.kind,
                                "start": s.start_time_unix_nano,
                                "end": s.end_time_unix_nano,
                                "attributes": {
                                    kv.key: any_value(kv.value) for kv in s.attributes
                                },
                                "status": s.status.code,
                                "headers": {
                                    k.lower(): v
                                    for k, v in self.headers.items()
                                    if k.lower().startswith("x-")
                                },
                            }
                        )
                    )
        with open(self.out_path, "a", encoding="utf-8") as f:
            for line in lines:
                f.write(line + "\n")
        reply = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):
        pass


def main():
    if len(sys.argv) not in (2, 3):
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    Handler.out_path = sys.argv[1]
    port = int(sys.argv[2]) if len(sys.argv) == 3 else 0
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    print(f"listening {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
