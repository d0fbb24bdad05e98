"""Reading videos through PyAV (FFmpeg): upright RGB frames with their index and time.

Frames come out as the viewer shows them: the container's rotation (display matrix, e.g. a phone
held upright) is applied, and non-square pixels are resized to square ones. Frame times come from
each frame's own timestamp, so variable-frame-rate video samples correctly at a target fps.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import NamedTuple

import numpy as np

VIDEO_SUFFIXES = {
    ".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".wmv", ".flv", ".mpg", ".mpeg",
    ".ts", ".mts", ".m2ts", ".3gp", ".ogv",
}


class BadVideo(Exception):
    """A video that cannot be decoded (or stops decoding part-way); the message says why.
    `reason` is "no_frames" for a container without any video frame in it (a header only, an
    audio-only file) and "unreadable" otherwise."""

    def __init__(self, message: str, reason: str = "unreadable") -> None:
        super().__init__(message)
        self.reason = reason


class VideoFrame(NamedTuple):
    index: int  # position of the frame in the stream, counting every decoded frame from 0
    time_s: float  # presentation time from the start of the stream
    rgb: np.ndarray  # (H, W, 3) uint8, upright


def _upright(frame, rgb: np.ndarray, sar: Fraction | None) -> np.ndarray:
    import cv2

    if sar and sar.numerator > 0 and sar != 1:
        w = max(1, round(rgb.shape[1] * float(sar)))
        rgb = cv2.resize(rgb, (w, rgb.shape[0]), interpolation=cv2.INTER_AREA if sar < 1 else cv2.INTER_LINEAR)
    try:
        rotation = frame.rotation  # counter-clockwise degrees to turn the frame for display
    except (AttributeError, ValueError):
        rotation = 0
    k = round((rotation or 0) / 90) % 4
    if k:
        rgb = np.ascontiguousarray(np.rot90(rgb, k))
    return rgb


def probe_frames(path: Path) -> int | None:
    """The number of frames the container declares (None where it does not say)."""
    import av

    try:
        with av.open(str(path)) as c:
            if not c.streams.video:
                return None
            return c.streams.video[0].frames or None
    except (av.error.FFmpegError, OSError):
        return None


def iter_video_frames(
    path: Path, every_nth: int = 1, target_fps: float | None = None
) -> Iterator[VideoFrame]:
    """Yield sampled frames of the first video stream of `path`.

    Sampling: every `every_nth` decoded frame, or, when `target_fps` is set, the first frame at
    or after each 1/target_fps step of presentation time (so variable frame rates and rates below
    the target are handled). Raises BadVideo when the file cannot be opened or has no video
    stream, and when decoding fails part-way (after yielding the frames before the failure)."""
    import av

    if every_nth < 1:
        raise ValueError("every_nth must be >= 1")
    try:
        if Path(path).stat().st_size == 0:
            raise BadVideo("empty file (0 bytes)")
        container = av.open(str(path))
    except av.error.EOFError:
        # a container that ends right after its header (e.g. Matroska with no frames written)
        raise BadVideo("the video has no frames", "no_frames") from None
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise BadVideo(f"cannot open video ({_why(e)})") from None
    with container:
        if not container.streams.video:
            raise BadVideo("no video stream (no frames)", "no_frames")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        sar = stream.sample_aspect_ratio or stream.codec_context.sample_aspect_ratio
        rate = stream.average_rate or stream.guessed_rate or Fraction(25)
        start = None
        last_bucket = -1
        index = -1
        try:
            for frame in container.decode(stream):
                index += 1
                t = frame.time
                if t is None:
                    t = index / float(rate)
                if start is None:
                    start = t
                t = t - start
                if target_fps is not None:
                    bucket = math.floor(t * target_fps + 1e-6)
                    if bucket <= last_bucket:
                        continue
                    last_bucket = bucket
                elif index % every_nth:
                    continue
                rgb = frame.to_ndarray(format="rgb24")
                yield VideoFrame(index, float(t), _upright(frame, rgb, sar))
        except av.error.FFmpegError as e:
            raise BadVideo(f"decoding failed after frame {index} ({_why(e)})") from None


def _why(e: Exception) -> str:
    msg = str(e).strip().splitlines()
    return msg[0] if msg and msg[0] else type(e).__name__
