"""A WHIP publisher that is not ours: aiortc (from PyPI) sends a test pattern (VP8) and
silence (Opus) to a WHIP endpoint for a while, then ends the session with DELETE.

    python3 aiortc_publish.py <whip url> <bearer token> <seconds>

Prints one JSON line when connected ({"location", "state"}) and one when done.
"""

import asyncio
import json
import sys
import urllib.error
import urllib.parse
import urllib.request

from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack, VideoStreamTrack


def http(method, url, token, body=None, content_type=None):
    headers = {"Authorization": "Bearer " + token}
    if content_type:
        headers["Content-Type"] = content_type
    request = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            headers = {k.lower(): v for k, v in response.headers.items()}
            return response.status, headers, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read().decode()


async def main(url, token, seconds):
    pc = RTCPeerConnection()
    pc.addTransceiver(AudioStreamTrack(), direction="sendonly")
    pc.addTransceiver(VideoStreamTrack(), direction="sendonly")
    # aiortc gathers every candidate here, so the offer is complete (no trickle).
    await pc.setLocalDescription(await pc.createOffer())
    loop = asyncio.get_running_loop()
    offer = pc.localDescription.sdp.encode()
    status, headers, answer = await loop.run_in_executor(
        None, http, "POST", url, token, offer, "application/sdp"
    )
    if status != 201:
        print(json.dumps({"error": f"POST answered {status}: {answer.strip()}"}), flush=True)
        return 1
    if "location" not in headers:
        print(json.dumps({"error": "201 without a Location"}), flush=True)
        return 1
    location = urllib.parse.urljoin(url, headers["location"])
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    for _ in range(100):
        if pc.connectionState in ("connected", "failed"):
            break
        await asyncio.sleep(0.1)
    print(json.dumps({"location": location, "state": pc.connectionState}), flush=True)
    if pc.connectionState != "connected":
        return 1
    await asyncio.sleep(seconds)
    status, _, _ = await loop.run_in_executor(None, http, "DELETE", location, token)
    await pc.close()
    print(json.dumps({"deleted": status}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3]))))
