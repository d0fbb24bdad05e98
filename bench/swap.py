"""Face swap speed on this machine: frames per second of `autoswap swap` on a 640x360 video,
end to end (decode, detect, align, network, colour, blend, watermark, H.264 encode, audio copy,
C2PA signing), with the time split by step; plus the cost of a photo, and the watermark's
figures: PSNR, bits recovered after JPEG q75 / a 0.5x resize / H.264, false positives.

    PYTHONPATH=src python bench/swap.py [--frames 90] [--model models/final]

The clip is made from scikit-image's astronaut photo (nothing is downloaded) in a temporary
folder. Without a trained model at --model, a freshly initialised one with params.yaml's
geometry and width is used: the speed does not depend on the weights. The C2PA signer and the
watermark registry go to a temporary folder too.
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

import numpy as np  # noqa: E402
import photos  # noqa: E402  (bench/photos.py; bench/ is on sys.path when run as a script)
import skimage.data  # noqa: E402
from extract import write_video  # noqa: E402  (bench/extract.py: the same 640x360 pan and zoom)
from matplotlib import cbook  # noqa: E402

from autoswap import swap, watermark  # noqa: E402
from autoswap.config import load  # noqa: E402


def _model(settings, where: Path, tmp: Path) -> Path:
    if (where / "model.json").is_file():
        return where
    from autoswap.model import build, save_final

    d = tmp / "model"
    save_final(d, build(settings.model), {"model": settings.model.model_dump(mode="json"),
                                          "face_size": settings.data.face_size, "crop": settings.train.crop,
                                          "mlflow_run_id": None})
    return d


class _Timed:
    """Wraps a callable and adds its wall time to a bucket."""

    def __init__(self, fn, bucket: dict, key: str) -> None:
        self.fn, self.bucket, self.key = fn, bucket, key

    def __call__(self, *a, **k):
        t = time.perf_counter()
        try:
            return self.fn(*a, **k)
        finally:
            self.bucket[self.key] = self.bucket.get(self.key, 0.0) + time.perf_counter() - t


def watermark_figures() -> dict:
    """The watermark on the photos bundled with scikit-image and matplotlib: PSNR of marked vs
    unmarked, and what survives a JPEG re-encode at q75 (PIL's default 4:2:0) and a 0.5x resize:
    the share of the 48 code bits (32-bit ID + CRC-16) and of the 1280 single slots decoded right."""
    imgs = photos.photos()
    jpeg, half = photos.jpeg, photos.half

    attacks = {"fresh": lambda a: a, "jpeg_q75": jpeg, "resize_0.5x": half, "resize_0.5x+jpeg_q75": lambda a: jpeg(half(a))}
    wm = 0x5A17C0DE
    rows: dict[str, list] = {k: [] for k in attacks}
    psnr = []
    for img in imgs.values():
        marked = watermark.embed_watermark(img, wm)
        psnr.append(10 * np.log10(255.0**2 / np.mean((marked.astype(np.float64) - img) ** 2)))
        for k, fn in attacks.items():
            r = watermark.detect_watermark(fn(marked))
            rows[k].append((r.found and r.id == wm, *watermark.bit_accuracy(r, wm), r.confidence))
    out = {"photos": len(imgs), "psnr_db": {"min": round(min(psnr), 2), "mean": round(float(np.mean(psnr)), 2)}}
    for k, v in rows.items():
        a = np.array(v, dtype=np.float64)
        out[k] = {"found": f"{int(a[:, 0].sum())}/{len(a)}", "code_bits_right_mean": round(a[:, 1].mean(), 4),
                  "code_bits_right_min": round(a[:, 1].min(), 4), "slots_right_mean": round(a[:, 2].mean(), 4),
                  "slots_right_min": round(a[:, 2].min(), 4), "confidence_min": round(a[:, 3].min(), 3)}
    unmarked = [watermark.detect_watermark(v) for v in photos.unmarked_variants(imgs, 100)]
    out["unmarked_100"] = {"found": sum(r.found for r in unmarked),
                           "confidence_max": round(max(r.confidence for r in unmarked), 3),
                           "threshold": watermark.WM_MIN_CONFIDENCE}
    return out


def video_watermark(path: Path, wm: int) -> dict:
    """Per decoded frame of a swapped video: the share of code bits and slots right."""
    from autoswap.video import iter_video_frames

    frames = [f.rgb for f in iter_video_frames(path)]
    per = [watermark.bit_accuracy(watermark.detect_watermark(f), wm) + (watermark.detect_watermark(f).found,) for f in frames]
    vote, alone = watermark.detect_watermark_frames(frames)
    a = np.array(per, dtype=np.float64)
    return {"frames": len(frames), "frames_carrying_id_alone": alone,
            "code_bits_right_per_frame_mean": round(a[:, 0].mean(), 4), "slots_right_per_frame_mean": round(a[:, 1].mean(), 4),
            "all_frames_voted": {"found": vote.found and vote.id == wm, "code_bits_right": watermark.bit_accuracy(vote, wm)[0],
                                 "slots_right": round(watermark.bit_accuracy(vote, wm)[1], 4)}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=90, help="frames in the 640x360 test video")
    ap.add_argument("--model", type=Path, default=Path("models/final"))
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = ap.parse_args()

    base = load(args.params)
    results: dict = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs"}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = _model(base, args.model, tmp)
        results["model"] = "trained" if model_dir == args.model else "untrained (params.yaml geometry)"
        video = tmp / "clip.mp4"
        write_video(video, skimage.data.astronaut(), args.frames, (640, 360))
        for name, track in (("tracking", True), ("no_tracking", False)):
            s = base.model_copy(update={
                "swap": base.swap.model_copy(update={"model": model_dir, "key_dir": tmp / "keys"}),
                "extract": base.extract.model_copy(update={"track": track}),
            })
            run = swap.SwapRun(s, progress=False)
            results["model_geometry"] = vars(run.model.geometry) | {"width": run.model.card.model.width}
            # warm up: detector, network, watermark tables
            rgb = np.asarray(skimage.data.astronaut())
            run.swapper.swap(rgb, [f.landmarks for f in run.swapper.finder(False)(rgb)])
            watermark.embed_watermark(rgb, 1)
            split: dict[str, float] = {}
            import autoswap.faces as ex  # where the face finder looks them up

            real = (ex.detect, ex.detect_near)
            ex.detect, ex.detect_near = _Timed(ex.detect, split, "detect"), _Timed(ex.detect_near, split, "detect")
            run.swapper.swap = _Timed(run.swapper.swap, split, "align+network+colour+blend")
            run.marker.pixels = _Timed(run.marker.pixels, split, "watermark")
            run.marker.finish_video = _Timed(run.marker.finish_video, split, "c2pa")
            t = time.perf_counter()
            r = run.video(video, tmp / f"out_{name}.mp4")
            dt = time.perf_counter() - t
            ex.detect, ex.detect_near = real
            split["decode+encode+other"] = dt - sum(split.values())
            results[f"video_640x360_{name}"] = {
                "frames": r["frames"], "swapped_frames": r["swapped_frames"], "seconds": round(dt, 2),
                "fps": round(r["frames"] / dt, 2),
                "ms_per_frame": {k: round(1000 * v / r["frames"], 1) for k, v in split.items()},
            }
            if track:
                results["watermark_in_the_video_crf18"] = video_watermark(tmp / f"out_{name}.mp4", run.marker.wm_id)
        photo = tmp / "gh.jpg"
        with cbook.get_sample_data("grace_hopper.jpg") as f:
            photo.write_bytes(f.read())
        t = time.perf_counter()
        run.image(photo, tmp / "gh_out.jpg")
        results["photo_512x600_seconds"] = round(time.perf_counter() - t, 3)
    results["watermark_on_photos"] = watermark_figures()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
