#!/usr/bin/env python3
"""A chat client written from PROTOCOL.md alone, on libzmq (Debian's python3-zmq).

It proves that any ZeroMQ binding can use the system: REQ sockets to the
broker (Lazy Pirate retries: a fresh socket after a timeout, the same client
id and request number), a SUB socket to the pubsub, the JSON envelope,
publications as [topic, payload] frames, sealed direct messages (opened when
python3-cryptography is installed), history, and the error codes of bad input
sent through a DEALER.

    interop.py --broker tcp://127.0.0.1:5555 --pubsub tcp://127.0.0.1:5558 --suffix abc

Prints one line per check and "PASS" at the end (exit 0), or "FAIL: why"
(exit 1). Users PySUFFIX and pySUFFIX, password "py-secret-1"/"py-secret-2",
channel PyChanSUFFIX.
"""

import argparse
import base64
import json
import os
import struct
import sys
import time

import zmq

TIMEOUT_MS = 2000
RETRYABLE = ("not_leader", "unavailable", "rate_limited")


class Fail(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Fail(what)
    print("ok:", what, flush=True)


class Client:
    """Requests over REQ with Lazy Pirate retries, as PROTOCOL.md says."""

    def __init__(self, ctx, endpoint):
        self.ctx, self.endpoint = ctx, endpoint
        self.client = os.urandom(8).hex()
        self.req = 0
        self.lamport = 0
        self.token = None
        self.sock = None

    def _open(self):
        if self.sock is not None:
            self.sock.close(linger=0)
        self.sock = self.ctx.socket(zmq.REQ)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(self.endpoint)

    def request(self, service, data=None):
        """Builds a new request (the next req number)."""
        self.req += 1
        self.lamport += 1
        msg = {"service": service, "client": self.client, "req": self.req, "lamport": self.lamport}
        if data is not None:
            msg["data"] = data
        if self.token:
            msg["token"] = self.token
        return msg

    def call(self, service, data=None):
        return self.send(self.request(service, data))

    def send(self, msg, tries=12):
        body = json.dumps(msg).encode()
        pause = 0.05
        for _ in range(tries):
            if self.sock is None:
                self._open()
            self.sock.send(body)
            if self.sock.poll(TIMEOUT_MS, zmq.POLLIN):
                rep = json.loads(self.sock.recv())
                self.lamport = max(self.lamport, rep.get("lamport", 0)) + 1
                if not rep["ok"] and rep["error"]["code"] in RETRYABLE:
                    time.sleep(pause)
                    pause = min(2 * pause, 1.0)
                    continue
                return rep
            self._open()  # a REQ that lost its reply cannot be reused
            time.sleep(pause)
            pause = min(2 * pause, 1.0)
        raise Fail("%s: no usable reply after %d tries" % (msg["service"], tries))

    def ok(self, service, data=None):
        rep = self.call(service, data)
        if not rep["ok"]:
            raise Fail("%s refused: %s" % (service, rep["error"]))
        return rep


def raw(ctx, endpoint, frames):
    """Sends frames on a fresh DEALER and returns the reply's JSON (None on timeout)."""
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(endpoint)
    try:
        s.send_multipart(frames)
        if not s.poll(3 * TIMEOUT_MS, zmq.POLLIN):
            return None
        rep = s.recv_multipart()
        if len(rep) != 2 or rep[0] != b"":
            raise Fail("reply frames %r: want [empty, reply]" % (rep,))
        return json.loads(rep[1])
    finally:
        s.close(linger=0)


def next_publication(sub, topic, timeout_s):
    """The next publication on topic within timeout_s, as (frames, payload), or None."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not sub.poll(int(left * 1000) + 1, zmq.POLLIN):
            return None
        frames = sub.recv_multipart()
        if frames[0] == topic.encode():
            return frames, json.loads(frames[1])


# --- XChaCha20-Poly1305 (sealed direct messages): HChaCha20 by hand, the AEAD
# from python3-cryptography when it is installed.

def _rotl(v, n):
    return ((v << n) & 0xFFFFFFFF) | (v >> (32 - n))


def _hchacha20(key, nonce16):
    s = list(struct.unpack("<4I", b"expand 32-byte k")) + list(struct.unpack("<8I", key)) + list(struct.unpack("<4I", nonce16))

    def qr(a, b, c, d):
        s[a] = (s[a] + s[b]) & 0xFFFFFFFF; s[d] = _rotl(s[d] ^ s[a], 16)
        s[c] = (s[c] + s[d]) & 0xFFFFFFFF; s[b] = _rotl(s[b] ^ s[c], 12)
        s[a] = (s[a] + s[b]) & 0xFFFFFFFF; s[d] = _rotl(s[d] ^ s[a], 8)
        s[c] = (s[c] + s[d]) & 0xFFFFFFFF; s[b] = _rotl(s[b] ^ s[c], 7)

    for _ in range(10):
        qr(0, 4, 8, 12); qr(1, 5, 9, 13); qr(2, 6, 10, 14); qr(3, 7, 11, 15)
        qr(0, 5, 10, 15); qr(1, 6, 11, 12); qr(2, 7, 8, 13); qr(3, 4, 9, 14)
    return struct.pack("<8I", *(s[0:4] + s[12:16]))


def open_sealed(key_b64, sealed_b64):
    """Opens a sealed publication; None when python3-cryptography is missing."""
    try:
        from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
    except ImportError:
        return None
    key, box = base64.b64decode(key_b64), base64.b64decode(sealed_b64)
    nonce, ct = box[:24], box[24:]
    sub = _hchacha20(key, nonce[:16])
    return json.loads(ChaCha20Poly1305(sub).decrypt(b"\0\0\0\0" + nonce[16:], ct, None))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--broker", required=True)
    ap.add_argument("--pubsub", required=True)
    ap.add_argument("--suffix", default=os.urandom(3).hex())
    args = ap.parse_args()
    ctx = zmq.Context()
    print("libzmq", zmq.zmq_version(), "pyzmq", zmq.__version__, flush=True)

    ana_name, bob_name, chan = "Py" + args.suffix, "py" + args.suffix, "PyChan" + args.suffix
    ana, bob = Client(ctx, args.broker), Client(ctx, args.broker)

    # Accounts. Names keep their case: Py... and py... are two users.
    rep = ana.call("register", {"user": ana_name, "password": "py-secret-1"})
    check(rep["ok"] and rep["data"]["user"] == ana_name, "register %s" % ana_name)
    check(bob.call("register", {"user": bob_name, "password": "py-secret-2"})["ok"], "register %s (same name, other case)" % bob_name)
    rep = bob.call("register", {"user": ana_name, "password": "whatever1"})
    check(not rep["ok"] and rep["error"]["code"] == "exists", "a taken name: exists")
    unknown = bob.call("login", {"user": "nobody" + args.suffix, "password": "py-secret-1"})
    wrong = bob.call("login", {"user": ana_name, "password": "wrong-password"})
    check(unknown["error"]["code"] == "bad_credentials" and wrong["error"]["code"] == "bad_credentials"
          and unknown["error"]["message"] == wrong["error"]["message"],
          "unknown user and wrong password: the same bad_credentials")

    login = ana.ok("login", {"user": ana_name, "password": "py-secret-1"})["data"]
    for field in ("user", "token", "expires", "channels", "mailbox_seq", "mailbox_topic", "mailbox_key"):
        check(field in login, "login reply has %r" % field)
    ana.token = login["token"]
    bob_login = bob.ok("login", {"user": bob_name, "password": "py-secret-2"})["data"]
    bob.token = bob_login["token"]
    check(login["mailbox_topic"] != bob_login["mailbox_topic"], "each user has a mailbox topic of their own")

    # Subscribe first (then the history covers the gap).
    topic = "channel/%s/" % chan
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.connect(args.pubsub)
    for t in (topic, bob_login["mailbox_topic"]):
        sub.setsockopt(zmq.SUBSCRIBE, t.encode())

    # Channels.
    rep = ana.ok("create", {"channel": chan, "description": "from python"})
    c = rep["data"]["channels"][0]
    check(c["name"] == chan and c["description"] == "from python" and c["owner"] == ana_name
          and c["joined"] is True and c["members"] == 1 and c["seq"] == 0 and c["topic"] == topic,
          "create %s: %s" % (chan, c))
    rep = bob.ok("join", {"channel": chan})
    check(rep["data"]["channels"][0]["members"] == 2, "join: two members")
    names = [c["name"] for c in ana.ok("channels")["data"]["channels"]]
    check(chan in names, "channels lists %s" % chan)

    # Post until a publication arrives: a new subscription takes a moment to
    # reach the pubsub (ZeroMQ's slow joiner); what it missed is in history.
    posted, pub = {}, None
    for i in range(1, 41):
        rep = ana.ok("post", {"channel": chan, "text": "hello from python %d" % i})
        m = rep["data"]["message"]
        check(m["seq"] == i and m["channel"] == chan and m["from"] == ana_name and rep["epoch"] >= 1 and rep["server"] >= 1,
              "post %d: seq %d, epoch %d, server %d" % (i, m["seq"], rep["epoch"], rep["server"]))
        posted[m["seq"]] = m
        got = next_publication(sub, topic, 0.5)
        if got:
            frames, pub = got
            break
    check(pub is not None, "a publication arrived")
    check(len(frames) == 2, "a publication is two frames [topic, payload]")
    for field in ("type", "epoch", "channel", "from", "text", "seq", "lamport", "time"):
        check(field in pub, "publication has %r" % field)
    check(pub["type"] == "message" and pub["channel"] == chan and posted[pub["seq"]]["text"] == pub["text"],
          "publication is post %d: %r" % (pub["seq"], pub["text"]))

    rep = bob.ok("post", {"channel": chan, "text": "hello back from python"})
    last_seq = rep["data"]["message"]["seq"]
    check(last_seq == len(posted) + 1, "bob's post gets the next seq, %d" % last_seq)

    # A retried request (same client, same req) gets the original answer and is not applied twice.
    req = ana.request("post", {"channel": chan, "text": "sent twice"})
    first, again = ana.send(req), ana.send(req)
    check(first["ok"] and again["ok"] and first["data"]["message"]["seq"] == again["data"]["message"]["seq"] == last_seq + 1,
          "a retry is answered with the original seq %d" % first["data"]["message"]["seq"])
    stale = dict(req, req=req["req"] - 1)
    rep = ana.send(stale)
    check(not rep["ok"] and rep["error"]["code"] == "stale_request", "an older req: stale_request")

    # History: every post once, in order.
    hist = bob.ok("history", {"channel": chan})["data"]
    texts = [m["text"] for m in hist["messages"]]
    want = [posted[s]["text"] for s in sorted(posted)] + ["hello back from python", "sent twice"]
    check(texts == want and hist["seq"] == len(want), "history holds each post once, in order (%d)" % len(want))
    check([m["seq"] for m in hist["messages"]] == list(range(1, len(want) + 1)), "history seqs are 1..%d" % len(want))
    part = bob.ok("history", {"channel": chan, "after": 1, "before": 4, "limit": 50})["data"]["messages"]
    check([m["seq"] for m in part] == [2, 3], "history after 1 before 4: seqs 2 and 3")

    # A direct message: sealed on bob's mailbox topic, in both users' direct history.
    ana.ok("dm", {"to": bob_name, "text": "psst, python"})
    got = next_publication(sub, bob_login["mailbox_topic"], 5)
    check(got is not None and got[1]["type"] == "dm" and "sealed" in got[1] and "psst" not in got[0][1].decode(),
          "the direct message is published sealed on the recipient's mailbox topic")
    opened = open_sealed(bob_login["mailbox_key"], got[1]["sealed"])
    if opened is None:
        print("skip: python3-cryptography missing: sealed message not opened", flush=True)
    else:
        check(opened["from"] == ana_name and opened["to"] == bob_name and opened["text"] == "psst, python",
              "the sealed message opens with the mailbox key: %s" % opened)
    direct = bob.ok("history", {"direct": True})["data"]["messages"]
    check([(m["from"], m["to"], m["text"]) for m in direct] == [(ana_name, bob_name, "psst, python")],
          "bob's direct history holds the message")

    check("time" in ana.ok("time")["data"], "time")
    st = ana.ok("status")["data"]
    check(st["leader"] >= 1 and len(st["servers"]) >= 1, "status: leader %d" % st["leader"])
    users = bob.ok("users")["data"]["users"]
    check(all(set(u) <= {"name", "online", "last_seen"} for u in users) and {ana_name, bob_name} <= {u["name"] for u in users},
          "users lists names and presence only")

    # Bad input, through a DEALER: a clear error code each time.
    tok = ana.token
    bad = [
        ("non-JSON", [b"", b"not json at all"], "bad_request"),
        ("JSON that is not an object", [b"", b"[1, 2, 3]"], "bad_request"),
        ("a number for the service", [b"", b'{"service": 5}'], "bad_request"),
        ("no service", [b"", b'{"data": {}}'], "bad_request"),
        ("an unknown service", [b"", b'{"service": "frobnicate", "req": 1}'], "unknown_service"),
        ("a number for the channel", [b"", json.dumps({"service": "post", "token": tok, "data": {"channel": 5, "text": "x"}}).encode()], "bad_request"),
        ("a string for data", [b"", json.dumps({"service": "post", "token": tok, "data": "nope"}).encode()], "bad_request"),
        ("no data", [b"", json.dumps({"service": "post", "token": tok}).encode()], "bad_request"),
        ("an empty channel name", [b"", json.dumps({"service": "create", "token": tok, "data": {"channel": ""}}).encode()], "bad_request"),
        ("an overlong channel name", [b"", json.dumps({"service": "create", "token": tok, "data": {"channel": "x" * 33}}).encode()], "bad_request"),
        ("a channel name with a slash", [b"", json.dumps({"service": "create", "token": tok, "data": {"channel": "a/b"}}).encode()], "bad_request"),
        ("an empty text", [b"", json.dumps({"service": "post", "token": tok, "data": {"channel": chan, "text": ""}}).encode()], "bad_request"),
        ("an oversized frame", [b"", json.dumps({"service": "post", "token": tok, "data": {"channel": chan, "text": "x" * 70000}}).encode()], "too_large"),
        ("an overlong text", [b"", json.dumps({"service": "post", "token": tok, "data": {"channel": chan, "text": "x" * 4001}}).encode()], "too_large"),
        ("no token", [b"", json.dumps({"service": "post", "data": {"channel": chan, "text": "x"}}).encode()], "unauthorized"),
        ("a forged token", [b"", json.dumps({"service": "post", "token": "eyJhbGciOiJub25lIn0.eyJzdWIiOiJQeSJ9.", "data": {"channel": chan, "text": "x"}}).encode()], "unauthorized"),
        ("a token with a flipped byte", [b"", json.dumps({"service": "channels", "token": tok[:-2] + ("A" if tok[-2] != "A" else "B") + tok[-1]}).encode()], "unauthorized"),
        ("a post to a channel that does not exist", [b"", json.dumps({"service": "post", "token": tok, "data": {"channel": "nope" + args.suffix, "text": "x"}}).encode()], "not_found"),
        ("no empty delimiter", [json.dumps({"service": "time"}).encode()], "bad_request"),
        ("an extra frame", [b"", json.dumps({"service": "time"}).encode(), b"extra"], "bad_request"),
        ("an empty request", [b"", b""], "bad_request"),
    ]
    for what, frames, code in bad:
        rep = raw(ctx, args.broker, frames)
        check(rep is not None and rep["ok"] is False and rep["error"]["code"] == code and rep["error"]["message"],
              "%s: %s (%s)" % (what, code, rep and rep["error"]["message"]))
    # Not a member: bob leaves, then posts.
    bob.ok("leave", {"channel": chan})
    rep = bob.call("post", {"channel": chan, "text": "x"})
    check(not rep["ok"] and rep["error"]["code"] == "not_member", "a post by a non-member: not_member")

    # Nothing stored changed, and the servers still serve.
    hist2 = ana.ok("history", {"channel": chan})["data"]
    check(hist2 == hist, "bad input changed nothing stored")
    rep = ana.ok("post", {"channel": chan, "text": "still serving"})
    check(rep["data"]["message"]["seq"] == len(want) + 1, "still serving after bad input")
    print("PASS", flush=True)


if __name__ == "__main__":
    try:
        main()
    except Fail as e:
        print("FAIL:", e, flush=True)
        sys.exit(1)
