"""Data preparation on Apache Beam: `python -m vasa_jax.data.prepare --runner=beam [--beam_options="..."]`.

The same per-clip work as the local process pool (`prepare.prepare_task`: decode, track, crop, label, write the
clip file or its skip record), as a Beam pipeline, so that Dataflow, Flink or Spark can spread VoxCeleb-scale video
over many machines; then the TFDS dataset is written by TFDS's Beam writer on the same runner
(`prepared.build_dataset(..., beam_options=...)`). Both runners write the same files: a clip file per finished
clip is still the resumable unit, so a rerun (with either runner) does only the clips not yet done.

`--beam_options` are Beam's own pipeline flags (give them as `--beam_options="..."`, with the `=`), for example:
  --direct_num_workers=8 --direct_running_mode=multi_processing      (DirectRunner, the default: one machine)
  --runner=DataflowRunner --project=P --region=R --temp_location=gs://... --sdk_container_image=IMAGE
A distributed runner's workers need the project and its requirements (MediaPipe, PyAV, OpenCV) installed, which a
container image built from requirements.txt and requirements-face.txt gives, and must reach the input and output:
object-store URLs (each worker downloads its videos and writes its clip files through `vasa_jax.storage`; Beam's
own writes, the hand-over files and TFDS's shards, need Beam's file system for the scheme: apache-beam[gcp] for
gs://, which requirements-beam.txt does not pin) or a file system mounted at the same path everywhere.

Failure handling is the runner's: a Python error in a clip is a skip reason as in the local pool (`prepare_task`
never raises), but a native crash kills the worker that ran it, and the runner retries or fails the work item (the
local pool retries each suspect alone and records the culprit). Either way the clips already written stay done.
"""

from __future__ import annotations

import json
import shlex
import uuid
from typing import List


def pipeline_options(flags: str):
    """Beam `PipelineOptions` from a string of Beam's command-line flags. Unknown flags are an error here, before
    any clip is prepared (Beam itself would only log them)."""
    try:
        from apache_beam.options.pipeline_options import PipelineOptions
    except ModuleNotFoundError as missing:
        if missing.name != "apache_beam":
            raise
        raise ValueError("--runner=beam needs Apache Beam: pip install -r requirements-beam.txt") from None

    arguments = shlex.split(flags)
    options = PipelineOptions(arguments)
    unknown = options.get_all_options(retain_unknown_options=True, drop_default=True)
    known = options.get_all_options(drop_default=True)
    leftover = sorted(set(unknown) - set(known))
    if leftover:
        raise ValueError(f"--beam_options: unknown Beam option(s) {', '.join('--' + k for k in leftover)}")
    return options


def prepare_clips(tasks: List[tuple], output_dir: str, options) -> List[dict]:
    """Run `prepare.prepare_task` on every task in a Beam pipeline; return the workers' results (one dict per task,
    in no particular order). The results travel back through text files under `output_dir/beam/` (every runner can
    write those), read and removed once the pipeline has finished, through Beam's file systems (which serve a
    gs:// output with apache-beam[gcp])."""
    import apache_beam as beam
    from apache_beam.io.filesystems import FileSystems

    from vasa_jax.data import prepare

    if not tasks:
        return []
    results_dir = FileSystems.join(output_dir, "beam", uuid.uuid4().hex)
    with beam.Pipeline(options=options) as pipeline:
        _ = (pipeline
             | "Clips" >> beam.Create(tasks)
             | "OneClipPerWorkItem" >> beam.Reshuffle()
             | "Prepare" >> beam.Map(prepare.prepare_task)
             | "AsJson" >> beam.Map(json.dumps)
             | "Results" >> beam.io.WriteToText(FileSystems.join(results_dir, "results"), file_name_suffix=".jsonl"))
    results = []
    for found in FileSystems.match([FileSystems.join(results_dir, "results*.jsonl")])[0].metadata_list:
        with FileSystems.open(found.path) as f:
            results += [json.loads(line) for line in f.read().decode().splitlines() if line.strip()]
    FileSystems.delete([FileSystems.join(output_dir, "beam")])
    if len(results) != len(tasks):
        raise RuntimeError(f"the Beam pipeline returned {len(results)} results for {len(tasks)} clips")
    return results
