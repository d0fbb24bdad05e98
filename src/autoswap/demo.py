"""DVC stage `demo`: the trained model's showcase, and a check of the machinery on a real photo.

- swaps/showcase.png: validation faces of both people swapped in their own frames (the synthetic
  demo's rendered frames, or your photos) by `autoswap swap`'s path, beside the originals and,
  for the synthetic people, what the swap should look like (the same frame rendered as the other
  person). The model knows both faces here: this is the swap at work. Marked like every swap.
- swaps/grace_hopper.jpg and a short clip made from it (matplotlib's photo): a check of finding,
  alignment, blending and the three marks on a real photo and a video, on every `dvc repro`.
  The demo model has seen only cartoons, so the face it pastes there is a cartoon's.
  `swaps/verify.json` says whether the marks read back.
Settings: params.yaml's `swap` section (swap.demo: where the inputs and outputs go, the clip's
length), `extract` (finding faces) and `data.max_image_pixels`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from autoswap import tracking
from autoswap.config import Settings
from autoswap.files import atomic_write_json, check_output_dir, fresh_output_dir
from autoswap.mark import key_dir, verify
from autoswap.swap import SwapRun

DEMO_PHOTO = "grace_hopper.jpg"
DEMO_CLIP = "grace_hopper_clip.mp4"
SHOWCASE = "showcase.png"
SHOWCASE_FACES = 4  # per person


def showcase(settings: Settings, run: SwapRun, input_dir: Path, out: Path) -> dict | None:
    """swaps/showcase.png (see the module docstring): its unswapped frames are written to
    input_dir first, as the C2PA manifest's parent. None when there are no frames (aligned crops)."""
    from autoswap.photoscore import sheet_image, swap_val_photos, val_truths

    groups, originals = [], []
    for x, y in (("a", "b"), ("b", "a")):
        rows = swap_val_photos(settings, settings.swap.model, x, SHOWCASE_FACES)
        truths = val_truths(settings, x)
        if truths is not None:
            rows = [(*r, t) for r, t in zip(rows, truths, strict=False)]
        what = "original, swap, what it should look like" if truths is not None else "original, swap"
        groups.append((f"{x.upper()} swapped to {y.upper()}: {what}", rows))
        originals.append((f"{x.upper()}: the originals", [(r[0], r[0], r[2]) for r in rows]))
    image = sheet_image(groups, per_row=2)
    if image is None:
        return None
    source = input_dir / "showcase_originals.png"
    sheet_image(originals, per_row=2).save(source)
    dst = out / SHOWCASE
    run.marker.write_image(dst, np.asarray(image), "PNG", source)
    return {"input": str(source), "output": str(dst), "kind": "image", "faces": sum(len(r) for _, r in groups),
            "status": "swapped"}


def make_demo_inputs(folder: Path, frames: int) -> tuple[Path, Path]:
    """matplotlib's grace_hopper.jpg, and a short clip made from it: a slow zoom and pan over
    her face at 12 fps with a 440 Hz tone, whose last two frames show no face (a crop of the
    uniform)."""
    import av
    import cv2
    from matplotlib import cbook
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    photo = folder / DEMO_PHOTO
    with cbook.get_sample_data("grace_hopper.jpg") as f:
        photo.write_bytes(f.read())
    rgb = np.asarray(Image.open(photo).convert("RGB"))
    clip = folder / DEMO_CLIP
    w, h, fps, rate = 320, 240, 12, 44100
    centre = np.array([265.0, 210.0])  # her face
    with av.open(str(clip), "w") as c:
        vs = c.add_stream("libx264", rate=fps)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        vs.options = {"crf": "18", "preset": "veryfast"}
        aus = c.add_stream("aac", rate=rate)
        aus.layout = "mono"
        for i in range(frames):
            u = i / max(1, frames - 1)
            if i >= frames - 2:  # no face: the uniform below her chin
                m = cv2.getRotationMatrix2D((265.0, 520.0), 0, 1.0)
                m[:, 2] += np.array([w / 2, h / 2]) - np.array([265.0, 520.0])
            else:
                m = cv2.getRotationMatrix2D((float(centre[0]), float(centre[1])), -4 + 8 * u, 0.75 + 0.15 * u)
                m[:, 2] += np.array([w * (0.45 + 0.1 * u), h * 0.5]) - centre
            frame = cv2.warpAffine(rgb, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
            for p in vs.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                c.mux(p)
        n = round(frames / fps * rate)
        tone = (0.2 * np.sin(2 * np.pi * 440 * np.arange(n) / rate)).astype(np.float32)
        for k in range(0, n, 1024):
            af = av.AudioFrame.from_ndarray(tone[None, k:k + 1024], format="fltp", layout="mono")
            af.sample_rate, af.pts = rate, k
            for p in aus.encode(af):
                c.mux(p)
        for s in (aus, vs):
            for p in s.encode(None):
                c.mux(p)
    return photo, clip


def demo(settings: Settings, progress: bool = True) -> dict:
    """Swap the demo photo and clip with swap.model, verify the marks, write
    swap.demo.out_dir/{photo, clip, verify.json}, and log them to the model's MLflow run."""
    import mlflow

    d = settings.swap.demo
    run = SwapRun(settings, progress)  # the model (and signer) first: nothing is written without them
    inputs = (settings.swap.model, settings.data.dir_a, settings.data.dir_b)
    check_output_dir(d.input_dir, "params.yaml: key 'swap.demo.input_dir'", inputs, suggest="data/demo")
    out = fresh_output_dir(d.out_dir, "demo", "params.yaml: key 'swap.demo.out_dir'", (d.input_dir, *inputs),
                           suggest="swaps")
    photo, clip = make_demo_inputs(d.input_dir, d.frames)
    results = [run.file(photo, out / photo.name), run.file(clip, out / clip.name)]
    shown = showcase(settings, run, d.input_dir, out)
    if shown is not None:
        results.insert(0, shown)
    registry = key_dir(settings.swap.key_dir)
    checks = {Path(r["output"]).name: verify(Path(r["output"]), registry) for r in results}
    report = {"model": str(settings.swap.model), "to": settings.swap.to, "watermark_id": f"{run.marker.wm_id:08x}",
              "files": results, "verify": checks}
    atomic_write_json(out / "verify.json", report)
    # the stage's DVC output: the same bytes on every run (verify.json holds the run's watermark ID
    # and the outputs carry a timestamped signature, so they are no DVC outputs); not in git, so a
    # fresh clone's `dvc repro` runs the demo
    atomic_write_json(out / "demo.json", {"outputs": sorted(Path(r["output"]).name for r in results)})
    with tracking.log_to_model_run(run.model.dir) as active:
        if active is not None:
            mlflow.log_artifacts(str(out), artifact_path="swaps")
            mlflow.set_tag("autoswap.watermark_id", f"{run.marker.wm_id:08x}")
    return report
