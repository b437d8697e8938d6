"""A SPIFFE Workload API server for the tests, built from workload.proto
with grpcio: it stands in for a SPIRE agent on a Unix socket.

What it serves is steered by a JSON file the test writes (atomically):
  {"svids": [{"spiffe_id", "x509_svid", "x509_svid_key", "bundle", "hint"}],
   "federated_bundles": {"td": "..."}}
with every bytes field base64 (DER; certificates concatenated). Each change
of the file is pushed to every open FetchX509SVID stream, as an agent pushes
a rotation. Like SPIRE, it refuses calls without the
`workload.spiffe.io: true` metadata.

usage: server.py SOCKET STATE_FILE GENERATED_DIR
"""

import base64
import json
import os
import sys
import threading
import time
from concurrent import futures

socket_path, state_file, generated = sys.argv[1], sys.argv[2], sys.argv[3]
sys.path.insert(0, generated)

import grpc  # noqa: E402
import workload_pb2  # noqa: E402
import workload_pb2_grpc  # noqa: E402

state = {"version": 0, "text": None}
changed = threading.Condition()


def watch_state():
    """Polls the state file; a new content is a new update to push."""
    while True:
        try:
            with open(state_file) as f:
                text = f.read()
        except OSError:
            text = None
        if text is not None and text != state["text"]:
            with changed:
                state["text"] = text
                state["version"] += 1
                changed.notify_all()
        time.sleep(0.05)


def response(text):
    doc = json.loads(text)
    b = base64.b64decode
    return workload_pb2.X509SVIDResponse(
        svids=[
            workload_pb2.X509SVID(
                spiffe_id=s["spiffe_id"],
                x509_svid=b(s["x509_svid"]),
                x509_svid_key=b(s["x509_svid_key"]),
                bundle=b(s["bundle"]),
                hint=s.get("hint", ""),
            )
            for s in doc["svids"]
        ],
        federated_bundles={td: b(v) for td, v in doc.get("federated_bundles", {}).items()},
    )


class WorkloadApi(workload_pb2_grpc.SpiffeWorkloadAPIServicer):
    def FetchX509SVID(self, request, context):
        md = dict(context.invocation_metadata())
        if md.get("workload.spiffe.io") != "true":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "security header missing from request")
        # Headers now, as an agent does: the stream is open before the
        # first SVID is ready.
        context.send_initial_metadata(())
        seen = 0
        while context.is_active():
            with changed:
                if state["version"] == seen:
                    changed.wait(timeout=0.5)
                    continue
                seen, text = state["version"], state["text"]
            print(f"push update {seen}", flush=True)
            yield response(text)


def main():
    if os.path.exists(socket_path):
        os.unlink(socket_path)
    threading.Thread(target=watch_state, daemon=True).start()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    workload_pb2_grpc.add_SpiffeWorkloadAPIServicer_to_server(WorkloadApi(), server)
    server.add_insecure_port("unix:" + socket_path)
    server.start()
    print("serving", flush=True)
    server.wait_for_termination()


main()
