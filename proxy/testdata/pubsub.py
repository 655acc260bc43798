"""libzmq PUB -> proxy -> libzmq SUB, with topic filtering.

usage: pubsub.py FRONTEND BACKEND
Prints one JSON object: what the subscriber of "channel/ana/" received.
"""
import json
import sys
import time

import zmq

frontend, backend = sys.argv[1], sys.argv[2]
ctx = zmq.Context()
pub = ctx.socket(zmq.PUB)
pub.setsockopt(zmq.LINGER, 0)
pub.connect(frontend)
sub = ctx.socket(zmq.SUB)
sub.setsockopt(zmq.LINGER, 0)
sub.setsockopt(zmq.SUBSCRIBE, b"channel/ana/")
sub.connect(backend)

got, topics = [], set()
deadline = time.monotonic() + 10
i = 0
# Publish until the subscriptions have propagated (slow joiner), then 20 more.
while time.monotonic() < deadline and len(got) < 20:
    pub.send_multipart([b"channel/anabela/", b"anabela %d" % i])
    pub.send_multipart([b"channel/ana/", b"ana %d" % i])
    i += 1
    while sub.poll(10):
        topic, payload = sub.recv_multipart()
        topics.add(topic.decode())
        got.append(payload.decode())
print(json.dumps({"count": len(got), "topics": sorted(topics), "last": got[-1] if got else None}))
pub.close()
sub.close()
ctx.term()
