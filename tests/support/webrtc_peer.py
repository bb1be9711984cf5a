"""A WebRTC peer standing in for OpenAI's media server, for browser tests (aiortc, test-only).

Plugged in as the fake realtime upstream's SDP answerer (`fake.answerer = peer.answer`), it
answers a browser's offer with an audio track of its own (silence, as a model that has not
spoken yet) and takes the browser's "oai-events" data channel onto the call's session in the
fake: the browser gets `session.created` first, as from OpenAI, and every event it sends is
handled by the same session a sideband WebSocket sees. A hangup closes the peer connection.

No STUN or TURN server: host candidates only, and the browser's own checks (peer-reflexive
candidates) when its offer carries none, so it works on loopback and offline.
"""
from __future__ import annotations

import asyncio
import contextlib

from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError, MediaStreamTrack

from openai_gateway.demo.realtime_session import Call

CHANNEL = "oai-events"


class OpenAIPeer:
    """Answers calls; `frames` counts the audio frames received from the callers."""

    def __init__(self) -> None:
        self.connections: list[RTCPeerConnection] = []
        self.frames = 0
        self.channel_open = asyncio.Event()
        self.tasks: set[asyncio.Task] = set()

    async def answer(self, offer: str, call: Call) -> str:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.connections.append(pc)

        @pc.on("datachannel")
        def on_datachannel(channel) -> None:
            if channel.label == CHANNEL:
                self._spawn(self._serve(pc, channel, call))

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            if track.kind == "audio":
                self._spawn(self._listen(track))

        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
        pc.addTrack(AudioStreamTrack())  # after the offer: it takes the offered transceiver
        await pc.setLocalDescription(await pc.createAnswer())
        return pc.localDescription.sdp

    async def close(self) -> None:
        for pc in self.connections:
            await pc.close()
        for task in list(self.tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _serve(self, pc: RTCPeerConnection, channel, call: Call) -> None:
        """The data channel onto the call's session; events handled one at a time, in order."""
        inbox: asyncio.Queue = asyncio.Queue()
        channel.on("message", inbox.put_nowait)
        channel.on("close", lambda: inbox.put_nowait(None))

        async def send(text: str) -> None:
            if channel.readyState != "open":
                raise ConnectionError("the data channel is closed")
            channel.send(text)

        async def close(code: int) -> None:
            await pc.close()

        attachment = await call.session.attach("datachannel", send, close)
        self.channel_open.set()
        try:
            while (message := await inbox.get()) is not None:
                await call.session.receive(message, "datachannel")
        finally:
            call.session.detach(attachment)

    async def _listen(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                await track.recv()
                self.frames += 1
