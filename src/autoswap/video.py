"""Reading videos through PyAV (FFmpeg): upright RGB frames with their index and time.

Frames come out as the viewer shows them: the container's rotation (display matrix, e.g. a phone
held upright) is applied, and non-square pixels are resized to square ones (a pixel aspect ratio
outside 1:4..4:1 is refused: see MAX_SAR). Frame times come from
each frame's own timestamp, so variable-frame-rate video samples correctly at a target fps.
"""

from __future__ import annotations

import errno
import math
import os
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
    audio-only file), "bad_aspect" for pixels too far from square to be made square (see
    MAX_SAR), and "unreadable" otherwise."""

    def __init__(self, message: str, reason: str = "unreadable") -> None:
        super().__init__(message)
        self.reason = reason


class VideoFrame(NamedTuple):
    index: int  # position of the frame in the stream, counting every decoded frame from 0
    time_s: float  # presentation time from the start of the stream
    rgb: np.ndarray  # (H, W, 3) uint8, upright


# Pixel aspect ratios (SAR) outside 1:4..4:1 are refused: anamorphic video uses 2:1 at most (DV
# 10:11, PAL wide 64:45, HDV 4:3, 2x anamorphic 2:1), while a container can claim anything (an MP4
# `pasp` box of 65535:1 is read as it is) and stretching by it would make frames thousands of
# times as wide: memory, and faces no detector finds.
MAX_SAR = 4


def _sar(stream) -> Fraction | None:
    """The stream's pixel aspect ratio (the container's, else the codec's); None for square or
    unknown. Raises BadVideo (reason "bad_aspect") outside 1/MAX_SAR..MAX_SAR."""
    sar = stream.sample_aspect_ratio or stream.codec_context.sample_aspect_ratio
    if not sar or sar.numerator <= 0 or sar == 1:
        return None
    if not Fraction(1, MAX_SAR) <= sar <= MAX_SAR:
        raise BadVideo(
            f"pixel aspect ratio {sar.numerator}:{sar.denominator} is outside 1:{MAX_SAR}..{MAX_SAR}:1, so its "
            f"frames cannot be made square; re-encode it with square pixels (e.g. ffmpeg -vf setsar=1)",
            "bad_aspect",
        )
    return sar


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
        sar = _sar(stream)
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


# ----------------------------------------------------------------------------- writing (swap)
# H.264 in MP4/MOV: what `swap` writes. These containers take the audio codecs below as they
# are (stream copy); another audio codec would need re-encoding, so it is left out with a note.
H264_CONTAINERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov"}
COPYABLE_AUDIO = {"aac", "mp3", "alac", "ac3", "eac3", "opus", "flac"}


def _even(n: int) -> bool:
    return n % 2 == 0


def _open_input(src: Path):
    """The container of `src`, open; BadVideo (with its reason) when it cannot be read."""
    import av

    try:
        if Path(src).stat().st_size == 0:
            raise BadVideo("empty file (0 bytes)")
        return av.open(str(src))
    except av.error.EOFError:
        raise BadVideo("the video has no frames", "no_frames") from None
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise BadVideo(f"cannot open video ({_why(e)})") from None


def _audio_streams(inp, out, stats: dict) -> dict:
    """Output streams for the input's audio that MP4/MOV can carry as is (copied packet for
    packet); the others are dropped and named in stats. -> {input stream index: output stream}."""
    audio_map = {}
    for a in inp.streams.audio:
        name = a.codec_context.name
        if name in COPYABLE_AUDIO:
            audio_map[a.index] = out.add_stream_from_template(a)
            stats["audio_copied"].append(name)
        else:
            stats["audio_dropped"].append(name)
    return audio_map


def _out_frame(decoded, rgb, pix_fmt: str, pts, tb):
    """The frame to encode: the decoded one itself where it passes through untouched in the
    encoder's pixel format (bit-exact planes), else `rgb` (H, W, 3) converted; with its time."""
    import av

    if decoded is not None and decoded.format.name == pix_fmt:
        out_frame = decoded
    else:
        out_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24").reformat(format=pix_fmt)
    out_frame.pts, out_frame.time_base = pts, tb
    out_frame.pict_type = 0  # let the encoder choose (decoded frames carry I/P/B)
    return out_frame


# what a failed write of the output says (disk full, quota, no write access): errors of dst, not src
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM}


def transcode(
    src: Path,
    dst: Path,
    process,
    *,
    crf: int = 18,
    preset: str = "veryfast",
    metadata: dict[str, str] | None = None,
    x264_params: str | None = None,
    progress: bool = True,
    desc: str = "video",
) -> dict:
    """Re-encode the first video stream of `src` frame by frame into H.264 in `dst` (MP4 or
    MOV by suffix), copying every audio stream packet for packet.

    `process(index, time_s, rgb)` gets each upright RGB frame and returns the new frame (same
    shape, uint8) or None to let the frame through as decoded: with no rotation or non-square
    pixels to undo, the decoded YUV planes go to the encoder untouched (bit-exact after decoding
    when crf is 0). Every frame keeps its presentation time, so frame count, frame rate (constant
    or variable) and duration are those of the input. `metadata` becomes container tags;
    `x264_params` is passed to libx264 as is.

    Returns {"frames", "processed", "fps", "width", "height", "audio_copied", "audio_dropped"}.
    Raises BadVideo when `src` cannot be read."""
    import av

    from autoswap.progress import Progress

    suffix = Path(dst).suffix.lower()
    if suffix not in H264_CONTAINERS:
        raise ValueError(f"cannot write H.264 into {suffix}")
    inp = _open_input(src)
    stats = {"frames": 0, "processed": 0, "audio_copied": [], "audio_dropped": []}
    with inp:
        if not inp.streams.video:
            raise BadVideo("no video stream (no frames)", "no_frames")
        vs = inp.streams.video[0]
        vs.thread_type = "AUTO"
        sar = _sar(vs)
        rate = vs.average_rate or vs.guessed_rate or Fraction(25)
        stats["fps"] = float(rate)
        with av.open(str(dst), "w", format=H264_CONTAINERS[suffix],
                     container_options={"movflags": "use_metadata_tags"}) as out:
            out.metadata.update(metadata or {})
            audio_map = _audio_streams(inp, out, stats)
            ovs = None
            pending: list = []  # audio packets that arrive before the video stream is set up
            pix_fmt = "yuv420p"
            start_pts = None
            bar = Progress(desc, vs.frames or None, unit="frame", enabled=progress)

            def open_video(width: int, height: int):
                nonlocal ovs, pix_fmt
                pix_fmt = "yuv420p" if _even(width) and _even(height) else "yuv444p"
                ovs = out.add_stream("libx264", rate=rate)
                ovs.width, ovs.height, ovs.pix_fmt = width, height, pix_fmt
                ovs.codec_context.time_base = vs.time_base or Fraction(1, 90000)
                ovs.options = {"crf": str(crf), "preset": preset} | ({"x264-params": x264_params} if x264_params else {})

            def write(frame):
                for packet in ovs.encode(frame):
                    out.mux(packet)

            streams = [vs, *[a for a in inp.streams.audio if a.index in audio_map]]
            index = -1
            try:
                for packet in inp.demux(*streams):
                    if packet.stream.type == "audio":
                        if packet.dts is None:
                            continue
                        packet.stream = audio_map[packet.stream.index]
                        if ovs is None:
                            pending.append(packet)
                        else:
                            out.mux(packet)
                        continue
                    for frame in packet.decode():
                        index += 1
                        tb = frame.time_base or vs.time_base or Fraction(1, 90000)
                        pts = frame.pts if frame.pts is not None else round(index / rate / tb)
                        if start_pts is None:
                            start_pts = pts
                        rgb = frame.to_ndarray(format="rgb24")
                        upright = _upright(frame, rgb, sar)
                        if ovs is None:
                            open_video(upright.shape[1], upright.shape[0])
                            for p in pending:
                                out.mux(p)
                            pending.clear()
                        new = process(index, float((pts - start_pts) * tb), upright)
                        as_decoded = upright is rgb and new is None
                        if new is None:
                            new = upright
                        else:
                            stats["processed"] += 1
                        write(_out_frame(frame if as_decoded else None, new, pix_fmt, pts, tb))
                        stats["frames"] += 1
                        bar.update(1)
            except av.error.FFmpegError as e:
                bar.close(failed=True)
                if getattr(e, "errno", None) in _WRITE_ERRNOS:  # writing dst: a full disk, not a bad video
                    raise OSError(e.errno, os.strerror(e.errno), str(dst)) from None
                raise BadVideo(f"decoding failed after frame {index} ({_why(e)})") from None
            except BaseException:
                bar.close(failed=True)
                raise
            bar.close()
            if ovs is None:
                raise BadVideo("the video has no frames", "no_frames")
            write(None)
            stats["width"], stats["height"] = ovs.width, ovs.height
    return stats
