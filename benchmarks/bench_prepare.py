"""Preparation throughput: seconds of video prepared per second of wall time, in all and per worker, on a folder of
videos (default: the shared real videos), with the local process pool and with Apache Beam's DirectRunner, plus the
kept/skipped counts and where the time goes in one clip.

    python benchmarks/bench_prepare.py [--input DIR] [--workers 1,2] [--runners local,beam] [--resolution 256]

Each runner and worker count prepares the whole folder into a fresh temporary output ("beam": DirectRunner in
multi_processing mode with that many worker processes; needs requirements-beam.txt). "wall_seconds" is the clips'
phase (the throughput's denominator), "total_seconds" the whole run with the TFDS dataset write. The per-stage
split decodes, analyses and crops one clip by hand with the same functions the preparation uses.
"""

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vasa_jax import video  # noqa: E402
from vasa_jax.data import face, prepare  # noqa: E402


def stage_split(path: str, resolution: int) -> dict:
    """Seconds spent decoding, in Face Mesh (tracking, and detection on every fifth frame) and cropping + JPEG encoding, for one clip, per second of its video
    (frame by frame, as the preparation streams them)."""
    import cv2

    timings = {"decode": 0.0, "face_mesh": 0.0, "crop_jpeg": 0.0}
    count, size = 0, None
    frames = video.iter_video_frames(path)
    every = prepare.PrepareConfig.count_faces_every
    with face.FaceMesh(max_faces=1, tracking=True) as mesh, face.FaceMesh(max_faces=2) as detector:
        while True:
            start = time.perf_counter()
            frame = next(frames, None)
            timings["decode"] += time.perf_counter() - start
            if frame is None:
                break
            count, size = count + 1, frame.shape[:2]
            start = time.perf_counter()
            faces = mesh(frame)
            if count % every == 1:  # the face count by detection, as the preparation does it
                detector(frame)
            timings["face_mesh"] += time.perf_counter() - start
            if faces:
                start = time.perf_counter()
                crop = face.apply_crop(frame, face.crop_boxes(faces[0]), resolution)
                cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, 95])
                timings["crop_jpeg"] += time.perf_counter() - start
    seconds = count / 25
    return {"clip": os.path.basename(path), "video_seconds": seconds, "size": list(size),
            **{f"{k}_s_per_video_s": v / seconds for k, v in timings.items()}}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default_input = os.path.join(os.environ.get("VASA_MEDIA_DIR", "../shared/data/media"), "video")
    parser.add_argument("--input", default=default_input)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--runners", default="local,beam")
    parser.add_argument("--resolution", type=int, default=256)
    args = parser.parse_args()

    results = {"input": os.path.abspath(args.input), "resolution": args.resolution, "runs": []}
    runs = [(runner, int(w)) for runner in args.runners.split(",") for w in args.workers.split(",")]
    for runner, workers in runs:
        beam_options = None
        if runner == "beam":
            from vasa_jax.data import prepare_beam

            beam_options = prepare_beam.pipeline_options(
                f"--direct_num_workers={workers} --direct_running_mode=multi_processing")
        with tempfile.TemporaryDirectory() as output:
            config = prepare.PrepareConfig(resolution=args.resolution, layout="auto")
            start = time.perf_counter()
            summary = prepare.prepare(args.input, output, config, workers=workers, log=lambda *_: None,
                                      beam_options=beam_options)
            total = time.perf_counter() - start
        run = summary["this_run"]
        entry = {
            "runner": runner, "workers": workers, "videos": summary["videos"], "kept": summary["kept"], "skipped": summary["skipped"],
            "skipped_clips": summary["skipped_clips"], "video_seconds": round(run["seconds_of_video"], 2),
            "wall_seconds": round(run["wall_seconds"], 2), "total_seconds": round(total, 2),
            "video_seconds_per_second": round(run["video_seconds_per_second"], 3),
            "video_seconds_per_second_per_worker": round(run["video_seconds_per_second"] / workers, 3),
        }
        results["runs"].append(entry)
        print(json.dumps(entry), flush=True)
    clips = sorted(os.path.join(args.input, p) for p in prepare.find_videos(args.input))
    sizes = {}
    for path in clips:
        try:
            info = video.probe_video(path)
            sizes[path] = info["width"] * info["height"]
        except video.VideoError:
            pass
    results["stages"] = [stage_split(min(sizes, key=sizes.get), args.resolution),
                         stage_split(max(sizes, key=sizes.get), args.resolution)]
    for stage in results["stages"]:
        print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in stage.items()}), flush=True)
    return results


if __name__ == "__main__":
    main()
