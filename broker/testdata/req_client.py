"""A libzmq REQ client: sends N ping requests through the broker, prints each reply.

usage: req_client.py FRONTEND N
"""
import json
import sys

import zmq

endpoint, n = sys.argv[1], int(sys.argv[2])
ctx = zmq.Context()
s = ctx.socket(zmq.REQ)
s.setsockopt(zmq.LINGER, 0)
s.setsockopt(zmq.RCVTIMEO, 5000)
s.setsockopt(zmq.SNDTIMEO, 5000)
s.connect(endpoint)
try:
    for i in range(1, n + 1):
        s.send(json.dumps({"service": "ping", "req": i}).encode())
        print(s.recv().decode(), flush=True)
except zmq.Again:
    sys.exit("req_client: no reply within 5 s")
finally:
    s.close()
    ctx.term()
