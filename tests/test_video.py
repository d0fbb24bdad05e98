"""autoswap.video: frames in RGB order with their index and time, sampling by every n-th frame or
by a target rate on a constant-rate stream, non-square pixels made square, audio-only files, and
`transcode` keeping the frame count and timing. Rotation metadata, variable frame rates and broken
files are in test_extract.py; swapped videos end to end in test_swap.py."""

from fractions import Fraction

import av
import numpy as np
import pytest

from autoswap.video import BadVideo, iter_video_frames, probe_frames, transcode

FPS = 10


def frames(n=10, h=24, w=32):
    return [np.random.default_rng(i).integers(0, 256, (h, w, 3), dtype=np.uint8) for i in range(n)]


def encode(path, images, codec="ffv1", pix_fmt="bgr0", sar=None):
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=FPS)
        s.width, s.height, s.pix_fmt = images[0].shape[1], images[0].shape[0], pix_fmt
        if sar is not None:
            s.codec_context.sample_aspect_ratio = sar
        for f in images:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def test_frames_come_out_exact_in_rgb_order_with_their_times(tmp_path):
    src = frames()
    out = list(iter_video_frames(encode(tmp_path / "lossless.mkv", src)))  # FFV1 in BGR: lossless
    assert [f.index for f in out] == list(range(10))
    assert [f.time_s for f in out] == pytest.approx([i / FPS for i in range(10)], abs=1e-6)
    for f, want in zip(out, src, strict=True):
        np.testing.assert_array_equal(f.rgb, want)  # R, G, B as written, not swapped to BGR


def test_every_nth_and_target_fps_pick_the_right_frames(tmp_path):
    path = encode(tmp_path / "clip.mkv", frames())
    assert [f.index for f in iter_video_frames(path, every_nth=3)] == [0, 3, 6, 9]
    # 4 fps from 10: the first frame at or after each 0.25 s (0, 0.3, 0.5, 0.8)
    assert [f.index for f in iter_video_frames(path, target_fps=4)] == [0, 3, 5, 8]
    # a target above the stream's rate takes every frame once
    assert [f.index for f in iter_video_frames(path, target_fps=25)] == list(range(10))
    with pytest.raises(ValueError, match="every_nth"):
        next(iter_video_frames(path, every_nth=0))


def test_non_square_pixels_are_made_square(tmp_path):
    path = encode(tmp_path / "anamorphic.mp4", frames(4), codec="libx264", pix_fmt="yuv420p", sar=Fraction(2, 1))
    out = list(iter_video_frames(path))
    assert len(out) == 4 and all(f.rgb.shape == (24, 64, 3) for f in out)  # 32 stored pixels, each 2 wide
    assert probe_frames(path) == 4  # MP4 declares its frame count


def test_audio_only_file_has_no_frames(tmp_path):
    path = tmp_path / "voice.m4a"
    with av.open(str(path), "w") as c:
        s = c.add_stream("aac", rate=16000)
        for i in range(4):
            fr = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            fr.sample_rate, fr.pts = 16000, i * 1024
            for p in s.encode(fr):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    with pytest.raises(BadVideo) as e:
        list(iter_video_frames(path))
    assert e.value.reason == "no_frames"
    assert probe_frames(path) is None
    (tmp_path / "notes.mp4").write_text("not a video")
    assert probe_frames(tmp_path / "notes.mp4") is None


def test_transcode_keeps_every_frame_and_its_time_and_applies_process(tmp_path):
    src = [np.full((24, 32, 3), 40 + 20 * i, np.uint8) for i in range(8)]
    path = encode(tmp_path / "in.mkv", src)
    seen = []

    def process(index, time_s, rgb):
        seen.append((index, round(time_s, 6)))
        return 255 - rgb if index % 2 == 0 else None  # even frames inverted, odd ones passed through

    stats = transcode(path, tmp_path / "out.mp4", process, crf=0, progress=False)
    assert seen == [(i, i / FPS) for i in range(8)]
    assert (stats["frames"], stats["processed"], stats["fps"]) == (8, 4, FPS)
    assert (stats["width"], stats["height"]) == (32, 24)
    out = list(iter_video_frames(tmp_path / "out.mp4"))
    assert [f.time_s for f in out] == pytest.approx([i / FPS for i in range(8)], abs=1e-3)
    for f, want in zip(out, src, strict=True):
        want = 255 - want if f.index % 2 == 0 else want
        assert np.abs(f.rgb.astype(int) - want).max() <= 2, f.index
    with pytest.raises(ValueError, match="H.264 into .mkv"):
        transcode(path, tmp_path / "out.mkv", process, progress=False)
