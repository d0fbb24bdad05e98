"""Face extraction speed on this machine: faces per second on photos, frames per second on a
640x360 video (every frame searched, and at the default every_nth_frame).

    PYTHONPATH=src python bench/extract.py [--frames 90] [--photos 12]

Builds its media from photos that ship with matplotlib and scikit-image (nothing is downloaded)
in a temporary folder. The detector is built and warmed up before timing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import av  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import skimage.data  # noqa: E402
from matplotlib import cbook  # noqa: E402
from PIL import Image  # noqa: E402

from autoswap.config import ExtractSettings  # noqa: E402
from autoswap.extract import extract_to_dir  # noqa: E402
from autoswap.faces import detect  # noqa: E402


def photos() -> list[np.ndarray]:
    with cbook.get_sample_data("grace_hopper.jpg") as f:
        gh = np.asarray(Image.open(f).convert("RGB"))
    return [gh, skimage.data.astronaut()]


def write_video(path: Path, photo: np.ndarray, n: int, size: tuple[int, int], fps: int = 25) -> None:
    """Pan, zoom and rotate over `photo`, centred near its face, encoded with libx264."""
    w, h = size
    centre = np.array([224.0, 120.0])  # the astronaut's face
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.options = {"crf": "20", "preset": "veryfast"}
        for i in range(n):
            u = i / max(1, n - 1)
            zoom = 1.2 + 0.4 * u
            angle = -5 + 10 * u
            m = cv2.getRotationMatrix2D((float(centre[0]), float(centre[1])), angle, zoom)
            m[:, 2] += np.array([w * (0.35 + 0.3 * u), h * 0.45]) - centre
            frame = cv2.warpAffine(photo, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
            for p in s.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=90, help="frames in the 640x360 test video")
    ap.add_argument("--photos", type=int, default=12, help="photos in the photo test")
    args = ap.parse_args()

    cfg = ExtractSettings()
    base = photos()
    detect(base[0], cfg)  # build and warm up the detector
    results = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "face_size": 128}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        src = tmp / "photos"
        src.mkdir()
        for i in range(args.photos):
            img = base[i % 2]
            scale = (1.0, 1.6, 2.4)[(i // 2) % 3]  # 0.3 to 2 MP: larger ones are searched shrunk
            if scale != 1.0:
                img = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
            img = np.ascontiguousarray(np.roll(img, 7 * i, axis=1))
            Image.fromarray(img).save(src / f"p{i:03d}.jpg", quality=92)
        t = time.perf_counter()
        rep = extract_to_dir([src], tmp / "out_photos", cfg, 128, progress=False)
        dt = time.perf_counter() - t
        results["photos"] = {"files": rep["files"], "faces": rep["kept"], "seconds": round(dt, 2),
                             "faces_per_s": round(rep["kept"] / dt, 2)}

        video = tmp / "clip.mp4"
        write_video(video, base[1], args.frames, (640, 360))
        for nth, track in ((1, True), (1, False), (cfg.every_nth_frame, True)):
            vcfg = cfg.model_copy(update={"every_nth_frame": nth, "track": track})
            t = time.perf_counter()
            rep = extract_to_dir([video], tmp / f"out_video_{nth}_{track}", vcfg, 128, progress=False)
            dt = time.perf_counter() - t
            results[f"video_640x360_every_{nth}" + ("" if track else "_no_tracking")] = {
                "video_frames": args.frames, "searched_frames": rep["frames"], "faces": rep["kept"],
                "seconds": round(dt, 2), "searched_frames_per_s": round(rep["frames"] / dt, 2),
                "video_frames_per_s": round(args.frames / dt, 2),
            }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
