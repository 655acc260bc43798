"""libzmq (pyzmq) peers for the tests of the hardened transport and PLAIN.

  libzmq.py heartbeat ENDPOINT IDLE   DEALER with ZMTP heartbeats (50 ms, timeout
                                      200 ms): request, sit idle IDLE seconds,
                                      request; prints {"replies", "disconnects"}
  libzmq.py plain-client ENDPOINT USER PASS
                                      DEALER with PLAIN credentials: one request;
                                      prints {"replies", "handshake_failed"}
  libzmq.py plain-server USER PASS    ROUTER, PLAIN server with a ZAP handler that
                                      accepts only USER/PASS; prints its endpoint,
                                      echoes until stdin closes
"""
import json
import sys
import time

import zmq
from zmq.utils.monitor import recv_monitor_message


def events(mon):
    out = []
    while mon.poll(0):
        out.append(recv_monitor_message(mon)["event"])
    return out


def main():
    ctx = zmq.Context()
    mode = sys.argv[1]
    if mode == "heartbeat":
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.HEARTBEAT_IVL, 50)
        s.setsockopt(zmq.HEARTBEAT_TIMEOUT, 200)
        mon = s.get_monitor_socket()
        s.connect(sys.argv[2])
        replies = 0
        for i in range(2):
            s.send(b"ping-%d" % i)
            if s.poll(3000):
                s.recv()
                replies += 1
            if i == 0:
                time.sleep(float(sys.argv[3]))
        time.sleep(0.1)
        disconnects = events(mon).count(zmq.EVENT_DISCONNECTED)
        print(json.dumps({"replies": replies, "disconnects": disconnects}))
    elif mode == "plain-client":
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.plain_username = sys.argv[3].encode()
        s.plain_password = sys.argv[4].encode()
        mon = s.get_monitor_socket()
        s.connect(sys.argv[2])
        s.send(b"hello")
        replies = 1 if s.poll(1500) else 0
        failed = {zmq.EVENT_HANDSHAKE_FAILED_AUTH, zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
                  zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL} & set(events(mon))
        print(json.dumps({"replies": replies, "handshake_failed": bool(failed)}))
    elif mode == "plain-server":
        from zmq.auth.thread import ThreadAuthenticator
        auth = ThreadAuthenticator(ctx)
        auth.start()
        auth.configure_plain(domain="*", passwords={sys.argv[2]: sys.argv[3]})
        s = ctx.socket(zmq.ROUTER)
        s.setsockopt(zmq.LINGER, 0)
        s.plain_server = True
        port = s.bind_to_random_port("tcp://127.0.0.1")
        print("tcp://127.0.0.1:%d" % port, flush=True)
        poller = zmq.Poller()
        poller.register(s, zmq.POLLIN)
        poller.register(sys.stdin, zmq.POLLIN)
        while True:
            ready = dict(poller.poll())
            if s in ready:
                s.send_multipart(s.recv_multipart())
            if sys.stdin.fileno() in ready or sys.stdin in ready:
                if not sys.stdin.readline():
                    break
        auth.stop()
    else:
        sys.exit("unknown mode " + mode)
    ctx.destroy(linger=0)


if __name__ == "__main__":
    main()
