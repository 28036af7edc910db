"""Video sources beyond local files: an MP4 and an HLS playlist over HTTP on loopback.

A real HTTP server (the standard library's, with byte ranges, which MP4 demuxing needs)
serves the shipped clip and an HLS playlist whose segments PyAV made from it; the frames
`read_video` decodes from the URL equal those from the file.
"""

from __future__ import annotations

import functools
import http.server
import re
import shutil
import threading
from pathlib import Path

import av
import numpy as np
import pytest

from streamimg.sources.video import read_video
from tests.helpers import clip

CLIP = clip("carphone_pristine.mp4")  # 176x144, 120 frames


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """SimpleHTTPRequestHandler with single byte ranges (``Range: bytes=a-b``), quiet."""

    def send_head(self):
        match = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", ""))
        path = Path(self.translate_path(self.path))
        if match is None or not path.is_file():
            return super().send_head()
        size = path.stat().st_size
        first = int(match[1]) if match[1] else max(0, size - int(match[2] or 0))
        last = min(int(match[2]), size - 1) if match[1] and match[2] else size - 1
        if first >= size:
            self.send_error(416)
            return None
        f = open(path, "rb")  # noqa: SIM115 - the base class closes it after copyfile
        f.seek(first)
        self.send_response(206)
        self.send_header("Content-Type", self.guess_type(str(path)))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Range", f"bytes {first}-{last}/{size}")
        self.send_header("Content-Length", str(last - first + 1))
        self.end_headers()
        self._left = last - first + 1
        return f

    def copyfile(self, source, outputfile):
        left = getattr(self, "_left", None)
        if left is None:
            return super().copyfile(source, outputfile)
        while left > 0:
            chunk = source.read(min(left, 1 << 16))
            if not chunk:
                break
            outputfile.write(chunk)
            left -= len(chunk)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def http_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("www")
    shutil.copyfile(CLIP, root / "clip.mp4")
    # An HLS playlist of the same clip: FFmpeg's own HLS muxer (through PyAV), 1 s segments.
    with av.open(str(CLIP)) as src, av.open(str(root / "clip.m3u8"), "w", format="hls",
                                            options={"hls_time": "1",
                                                     "hls_playlist_type": "vod"}) as dst:
        s_in = src.streams.video[0]
        s_out = dst.add_stream("libx264", rate=s_in.average_rate)
        s_out.width, s_out.height, s_out.pix_fmt = s_in.width, s_in.height, "yuv420p"
        s_out.codec_context.gop_size = 15  # a keyframe every 15 frames: segments can split
        s_out.options = {"crf": "0", "preset": "ultrafast"}  # lossless: equal frames
        for i, frame in enumerate(src.decode(s_in)):
            frame.pts, frame.time_base = i, 1 / s_in.average_rate
            for packet in s_out.encode(frame):
                dst.mux(packet)
        for packet in s_out.encode(None):
            dst.mux(packet)
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(RangeHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def frames_of(source, **kwargs):
    return [f.image for f in read_video(source, start_ms=0, **kwargs)]


def test_an_mp4_over_http_decodes_to_the_files_frames(http_root):
    url, _ = http_root
    direct = frames_of(CLIP, frame_step=7)
    remote = frames_of(f"{url}/clip.mp4", frame_step=7)
    assert len(remote) == len(direct) == 18  # 120 frames, every 7th
    for a, b in zip(remote, direct, strict=True):
        np.testing.assert_array_equal(a, b)


def test_an_hls_playlist_over_http_gives_every_frame(http_root):
    url, root = http_root
    assert len(list(root.glob("clip*.ts"))) >= 4  # really segmented
    hls = frames_of(f"{url}/clip.m3u8")
    direct = frames_of(CLIP)
    assert len(hls) == len(direct) == 120
    # Lossless H.264 of the decoded frames: equal up to the YUV 4:2:0 round trip to RGB.
    worst = max(float(np.abs(a.astype(int) - b.astype(int)).mean()) for a, b in
                zip(hls, direct, strict=True))
    assert worst < 1.0, worst


def test_a_url_that_does_not_answer_fails_with_its_name():
    with pytest.raises(ValueError, match=r"http://127\.0\.0\.1:1/none\.mp4 is not a video"):
        next(read_video("http://127.0.0.1:1/none.mp4"))
