#!/usr/bin/env python3
"""Writes the seed corpus of every fuzz target into fuzz/corpus/<target>/: a few small,
meaningful inputs each (what a browser, the load generator or a server sends). Run it
again after changing a target's input format; the seeds are committed.

Tokens are minted here as proto::token::mint does (HS256 over base64url header.payload),
with the targets' fixed secret.
"""

import base64
import hashlib
import hmac
import json
import os
import shutil
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "..", "corpus")
SECRET = b"huiyi-fuzz-secret"  # fuzz_targets/token_verify.rs
EXP = 2_000_000_000  # 2033; the targets verify at 1_700_000_000
OFFER = open(os.path.join(HERE, "browser_offer.sdp"), encoding="utf-8").read()


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def mint(claims: dict, secret: bytes = SECRET, header: dict | None = None) -> str:
    header = header or {"alg": "HS256", "typ": "JWT"}
    signing_input = b64(json.dumps(header, separators=(",", ":")).encode()) + "." + b64(
        json.dumps(claims, separators=(",", ":")).encode()
    )
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64(signature)


def claims(**extra) -> dict:
    c = {"sub": "ana", "name": "Ana", "room": "r1", "exp": EXP}
    c.update(extra)
    c.setdefault("grants", {"canPublish": True, "canSubscribe": True, "roomAdmin": False})
    return c


def write(target: str, name: str, data) -> None:
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(CORPUS, target, name), "wb") as f:
        f.write(data)


def compact(message: dict) -> str:
    return json.dumps(message, separators=(",", ":"))


# --- RTP, RTCP, STUN, DTLS as a browser sends them ------------------------------------


def stun_binding_request(username: str) -> bytes:
    """A connectivity check as the demultiplexer sees it (no integrity: it routes only)."""
    attrs = struct.pack("!HHI", 0x0024, 4, 0x6E7F00FF)  # PRIORITY
    name = username.encode()
    attrs += struct.pack("!HH", 0x0006, len(name)) + name + b"\0" * (-len(name) % 4)
    attrs += struct.pack("!HHQ", 0x802A, 8, 0x1122334455667788)  # ICE-CONTROLLING
    attrs += struct.pack("!HH", 0x0025, 0)  # USE-CANDIDATE
    return struct.pack("!HHI", 0x0001, len(attrs), 0x2112A442) + bytes(range(1, 13)) + attrs


def dtls_client_hello() -> bytes:
    """A DTLS 1.2 ClientHello offering the GCM SRTP profiles, as a browser's first flight."""
    suites = [0xC02B, 0xC02F, 0xCCA9, 0xCCA8, 0xC009, 0xC013, 0xC00A, 0xC014]
    exts = b""
    exts += struct.pack("!HHB", 0xFF01, 1, 0)  # renegotiation_info, empty
    exts += struct.pack("!HH", 0x0017, 0)  # extended_master_secret
    groups = [0x001D, 0x0017, 0x0018]
    exts += struct.pack("!HHH", 0x000A, 2 + 2 * len(groups), 2 * len(groups)) + b"".join(
        struct.pack("!H", g) for g in groups
    )
    exts += struct.pack("!HHBB", 0x000B, 2, 1, 0)  # ec_point_formats: uncompressed
    algs = [0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601, 0x0201]
    exts += struct.pack("!HHH", 0x000D, 2 + 2 * len(algs), 2 * len(algs)) + b"".join(
        struct.pack("!H", a) for a in algs
    )
    profiles = [0x0007, 0x0008, 0x0001, 0x0002]
    exts += struct.pack("!HHH", 0x000E, 2 + 2 * len(profiles) + 1, 2 * len(profiles)) + b"".join(
        struct.pack("!H", p) for p in profiles
    ) + b"\0"  # use_srtp, no MKI
    body = b"\xfe\xfd" + bytes(range(32))  # client_version, random
    body += b"\0"  # session id
    body += b"\0"  # cookie
    body += struct.pack("!H", 2 * len(suites)) + b"".join(struct.pack("!H", s) for s in suites)
    body += b"\x01\x00"  # compression: null
    body += struct.pack("!H", len(exts)) + exts
    n = len(body)
    handshake = struct.pack("!B", 1) + n.to_bytes(3, "big") + struct.pack("!H", 0) + (0).to_bytes(3, "big")
    handshake += n.to_bytes(3, "big") + body
    return struct.pack("!BHH", 22, 0xFEFD, 0) + (0).to_bytes(6, "big") + struct.pack("!H", len(handshake)) + handshake


def rtp_vp8() -> bytes:
    """VP8 on the camera's low simulcast layer: mid and rid in a one-byte extension."""
    ext = bytes([0x40, ord("1"), 0xA0, ord("q")])  # id 4 mid "1", id 10 rid "q"
    header = struct.pack("!BBHII", 0x90, 96, 4711, 90000, 0x0BADCAFE)
    header += struct.pack("!HH", 0xBEDE, len(ext) // 4) + ext
    payload = bytes([0x90, 0xE0, 0x80, 0x05, 0x01]) + bytes([0x10, 0x02, 0x00, 0x9D, 0x01, 0x2A]) + b"\x11" * 24
    return header + payload


def rtcp_rr() -> bytes:
    return struct.pack("!BBHI", 0x80, 201, 1, 0x0000_1001)


def rtcp_nack(media: int, pairs) -> bytes:
    words = 2 + len(pairs)
    p = struct.pack("!BBHII", 0x81, 205, words, 0x0000_1001, media)
    return p + b"".join(struct.pack("!HH", pid, blp) for pid, blp in pairs)


def rtcp_pli(media: int) -> bytes:
    return struct.pack("!BBHII", 0x81, 206, 2, 0x0000_1001, media)


def main() -> None:
    shutil.rmtree(CORPUS, ignore_errors=True)
    targets = ["signaling_message", "token_verify", "sdp_offer", "session_datagram", "media_datagram", "srtcp_nack",
               "relay_link"]
    for t in targets:
        os.makedirs(os.path.join(CORPUS, t))

    # signaling_message: what a browser and the server put on the WebSocket.
    token = mint(claims())
    sig = "signaling_message"
    write(sig, "join", compact({"type": "join", "token": token}))
    write(sig, "offer", compact({"type": "offer", "sdp": OFFER, "tracks": [
        {"mid": "0", "source": "microphone"}, {"mid": "1", "source": "camera"}]}))
    write(sig, "answer", compact({"type": "answer", "sdp": "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"}))
    write(sig, "candidate", compact({"type": "candidate", "candidate":
        "candidate:1 1 udp 2122260223 192.168.1.20 54400 typ host generation 0"}))
    write(sig, "candidate_end", compact({"type": "candidate", "candidate": None}))
    write(sig, "mute", compact({"type": "mute", "trackId": "TR_abc", "muted": True}))
    write(sig, "subscribe", compact({"type": "subscribe", "tracks": [
        {"trackId": "TR_a", "width": 320, "height": 180}, {"trackId": "TR_b", "quality": "high"}]}))
    write(sig, "ping", '{"type":"ping"}')
    write(sig, "unknown_type", '{"type":"dance","steps":3}')
    write(sig, "server_joined", compact({"type": "joined", "room": "r1",
        "participant": {"id": "PA_1", "identity": "ana", "name": "Ana", "tracks": []},
        "participants": [{"id": "PA_2", "identity": "bo", "name": "Bo", "tracks": [
            {"id": "TR_b", "kind": "video", "source": "camera", "muted": False}]}]}))
    write(sig, "server_answer", compact({"type": "answer", "sdp": "v=0\r\n", "tracks": [
        {"mid": "1", "id": "TR_c", "kind": "video", "source": "camera", "muted": False}]}))
    write(sig, "server_slots", compact({"type": "slots", "slots": [
        {"mid": "2", "participantId": "PA_2", "trackId": "TR_b"}, {"mid": "3", "participantId": None, "trackId": None}]}))
    write(sig, "server_error", compact({"type": "error", "code": "bad_json", "message": "not JSON"}))

    # token_verify: tokens as sent, then recipes (after 0xff) to mint and alter.
    tv = "token_verify"
    write(tv, "valid", token)
    write(tv, "valid_with_nbf", mint(claims(nbf=1_600_000_000)))
    write(tv, "subscribe_only", mint(claims(grants={"canSubscribe": True})))
    write(tv, "expired", mint(claims(exp=1_600_000_000)))
    write(tv, "not_yet_valid", mint(claims(nbf=1_800_000_000)))
    write(tv, "other_secret", mint(claims(), secret=b"not the secret"))
    write(tv, "alg_none", mint(claims(), header={"alg": "none"}).rsplit(".", 1)[0] + ".")
    # flags (nbf, publish, subscribe, admin, other secret, alter, exp max), exp and nbf
    # offsets in minutes, where and what to alter, sub \0 room \0 name.
    write(tv, "recipe_valid", b"\xff" + bytes([0x07]) + struct.pack("!hhHB", 600, -60, 0, 0) + b"ana\0r1\0Ana")
    write(tv, "recipe_altered", b"\xff" + bytes([0x36]) + struct.pack("!hhHB", 600, 0, 100, ord("A")) + b"bo\0room\0")

    # sdp_offer: the browser's offer; with candidates; then an answer to the server's offer.
    so = "sdp_offer"
    write(so, "browser_offer", OFFER)
    audio_only = OFFER.split("m=video")[0].replace("a=group:BUNDLE 0 1", "a=group:BUNDLE 0")
    write(so, "audio_only_offer", audio_only)
    candidates = [
        "candidate:1 1 udp 2122260223 192.168.1.20 54400 typ host generation 0",
        "a=candidate:2 1 udp 1686052607 203.0.113.9 54400 typ srflx raddr 192.168.1.20 rport 54400",
        "candidate:3 1 udp 2122260223 4b6e7c1a-5f3e-4d2b-9a8c-1e2f3a4b5c6d.local 54400 typ host",
        "",
    ]
    # The client's answer to the server's offer: its own two m-lines as before, then the
    # server's two new send-only ones received (their mids are filled in by the target).
    transport = [
        "c=IN IP4 0.0.0.0", "a=ice-ufrag:cLi3", "a=ice-pwd:Qv8wZ1tLxm4pKr7sYe2nHd0b",
        "a=fingerprint:sha-256 3A:91:0C:5E:77:D2:48:1B:AF:60:93:2E:C4:0D:19:7B:E5:22:F8:36:4C:A1:5D:90:0E:7F:B3:68:21:CC:49:D6",
        "a=setup:active", "a=rtcp-mux",
    ]
    audio = ["a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid", "a=rtpmap:111 opus/48000/2",
             "a=fmtp:111 minptime=10;useinbandfec=1"]
    video = ["a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid",
             "a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id",
             "a=extmap:11 urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id",
             "a=rtcp-rsize", "a=rtpmap:96 VP8/90000", "a=rtcp-fb:96 nack", "a=rtcp-fb:96 nack pli",
             "a=rtpmap:97 rtx/90000", "a=fmtp:97 apt=96"]
    answer = "\r\n".join([
        "v=0", "o=- 4611731400430051336 3 IN IP4 127.0.0.1", "s=-", "t=0 0", "a=group:BUNDLE 0 1 MID0 MID1",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111", *transport, "a=mid:0", "a=sendrecv", "a=msid:stream0 mic0", *audio,
        "a=ssrc:1001 cname:fuzzcname",
        "m=video 9 UDP/TLS/RTP/SAVPF 96 97", *transport, "a=mid:1", "a=sendrecv", "a=msid:stream0 cam0", *video,
        "a=rid:q send", "a=rid:h send", "a=rid:f send", "a=simulcast:send q;h;f",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111", *transport, "a=mid:MID0", "a=recvonly", *audio,
        "m=video 9 UDP/TLS/RTP/SAVPF 96 97", *transport, "a=mid:MID1", "a=recvonly", *video, "",
    ])
    write(so, "offer_candidates_answer", "\0".join([OFFER, *candidates, answer]))
    # A renegotiation: the client offers again, with every m-line of the session.
    reoffer = answer.replace("a=setup:active", "a=setup:actpass").replace("o=- 4611731400430051336 3", "o=- 4611731400430051336 4")
    write(so, "offer_answer_reoffer", "\0".join([OFFER, answer, reoffer]))

    # media_datagram: a source choice byte (0 known address, 1 new IPv4, 2 new IPv6), then
    # the datagram.
    md = "media_datagram"
    write(md, "stun_known_ufrag", b"\x01" + stun_binding_request("srvA:cLi3"))
    write(md, "stun_unknown_ufrag", b"\x02" + stun_binding_request("nobody:cLi3"))
    write(md, "dtls_client_hello", b"\x00" + dtls_client_hello())
    write(md, "rtp_vp8", b"\x00" + rtp_vp8())
    write(md, "rtcp_rr_nack", b"\x00" + rtcp_rr() + rtcp_nack(0x0BADCAFE, [(4711, 0b101)]))

    # session_datagram: records of kind (0 datagram, 1 timer after N ms, 2 check), length.
    sd = "session_datagram"
    rec = lambda kind, data=b"", n=None: bytes([kind]) + struct.pack("!H", len(data) if n is None else n) + data
    write(sd, "client_hello", rec(0, dtls_client_hello()) + rec(1, n=50) + rec(0, dtls_client_hello()))
    write(sd, "media_before_dtls", rec(0, rtp_vp8()) + rec(0, rtcp_rr() + rtcp_pli(0x0BADCAFE)) + rec(2))
    write(sd, "checks_and_timers", rec(2) + rec(1, n=1000) + rec(2) + rec(1, n=30000))

    # srtcp_nack: settings, then records of op, step, length and bytes (see the target).
    sn = "srtcp_nack"
    r = lambda op, step, data: bytes([op]) + struct.pack("!hB", step, len(data)) + data
    compound = rtcp_rr() + rtcp_nack(0x0BADCAFE, [(4711, 0b101), (65535, 0xFFFF)])
    write(sn, "nacks_then_replay", b"\x00" + r(0, 0, compound) + r(0, 1, compound) + r(1, 0, b"") + r(0, -1, compound))
    write(sn, "two_senders_altered", b"\x03" + r(0x04, 5, compound) + r(0x08, 0, rtcp_rr() + rtcp_pli(7))
          + r(2, 3, b"") + r(0x04, -40, compound))
    write(sn, "junk", b"\x02" + r(3, 0, compound) + r(0, 300, compound))

    # relay_link: 0x00 then a datagram (flow id varint, RTP), 0x01 then a control message.
    rl = "relay_link"
    flow = (1 << 12) | (2 << 2) | 1  # slot 1, track 2, layer 1: a two-byte varint
    video = struct.pack("!H", 0x4000 | flow) + bytes([0x80, 0xE0]) + struct.pack("!HII", 4711, 90000, 0x1234) \
        + b"\x10\x00\x9d\x01\x2a"
    audio = bytes([8]) + bytes([0x90, 111]) + struct.pack("!HII", 7, 960, 0x99) \
        + struct.pack("!HH", 0xBEDE, 1) + bytes([0x10, 0x80 | 30, 0, 0]) + b"opus"
    write(rl, "video_datagram", b"\x00" + video)
    write(rl, "audio_datagram", b"\x00" + audio)
    track = {"track": 2, "id": "TR_x", "kind": "video", "source": "camera", "muted": False,
             "participant": "PA_t", "name": "t", "codecs": [{"pt": 96, "name": "vp8", "clock_rate": 90000}]}
    for name, message in [
        ("hello", {"type": "hello", "node": "edge-1", "http": "http://127.0.0.1:7700", "proof": "00" * 32}),
        ("room", {"type": "room", "room": "class", "slot": 1, "tracks": [track]}),
        ("nack", {"type": "nack", "flow": flow, "seqs": [1, 2, 65535]}),
        ("ready", {"type": "ready", "slot": 1, "tracks": [2]}),
        ("load", {"type": "load", "viewers": 3, "rooms": [["class", 3]]}),
    ]:
        write(rl, "control_" + name, b"\x01" + compact(message).encode())

    total = sum(os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(CORPUS) for f in fs)
    print(f"wrote the seed corpus: {total} bytes")


if __name__ == "__main__":
    main()
