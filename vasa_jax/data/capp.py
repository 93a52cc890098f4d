"""CAPP's training data (`vasa_jax.models.capp`): pairs of head-pose and audio windows, from a prepared real-video
dataset (`python -m vasa_jax.data.prepare`) or from the synthetic speakers (whose pitch nods with their speech's
loudness: a known coupling for checking that CAPP learns one and generalises to unseen speakers and speech).

Per record with speech: the head's yaw, pitch and roll per frame (the preparation's `pose[:, :3]`, degrees, from
`vasa_jax.data.face.head_pose` of the crop's landmarks; rotation does not depend on the crop, so generated videos'
frames give the same quantity) and the audio features of its speech under the project's feature policy
(`vasa_jax.audio.frame_features`). The features are computed when the source is built and held in memory.
"""

from __future__ import annotations

from typing import Dict, List

import numpy as np

from vasa_jax.models.capp import audio_input, pose_input


def audio_pose_clips(root: str, split: str, audio_encoder) -> List[Dict[str, np.ndarray]]:
    """[{"name", "angles" [T, 3] degrees, "features" [T, A]}] for every record of the split that has speech."""
    from vasa_jax.audio import frame_features
    from vasa_jax.data import prepared

    entries = prepared.load_index(root)["records"][split]
    if not entries:
        return []
    data = prepared.open_split(root, split)
    clips = []
    for index, entry in enumerate(entries):
        if not entry["has_audio"]:
            continue
        record = data[index]
        features = frame_features(audio_encoder, np.asarray(record["audio"], np.float32) / 32768.0)
        angles = np.asarray(record["pose"], np.float32)[:, :3]
        length = min(len(features), len(angles))
        clips.append({"name": f"{entry['clip']}_seg{int(entry['segment']):03d}", "angles": angles[:length],
                      "features": features[:length]})
    return clips


def synthetic_audio_pose_clips(config, split: str, audio_encoder) -> List[Dict[str, np.ndarray]]:
    """The same from the synthetic speakers (`vasa_jax.data.synthetic.SyntheticConfig`; split by identity): the
    true yaw, pitch and roll of every clip and the features of its speech."""
    from vasa_jax.audio import frame_features
    from vasa_jax.data import synthetic

    clips = []
    for identity in synthetic.identity_ids(config, split):
        for index in range(config.clips_per_identity):
            clip = synthetic.get_clip(config, int(identity), index)
            states = clip.states
            angles = np.stack([states.yaw, states.pitch, states.roll], axis=-1).astype(np.float32)
            features = frame_features(audio_encoder, clip.audio)
            length = min(len(features), len(angles))
            clips.append({"name": f"synthetic_{int(identity)}_{index}", "angles": angles[:length],
                          "features": features[:length]})
    return clips


def clips_for_config(data_config, split: str, audio_encoder) -> List[Dict[str, np.ndarray]]:
    """The clips of a CAPP config's data section (`configs/capp.py`): its synthetic speakers or its prepared
    dataset."""
    if data_config.source == "synthetic":
        from vasa_jax.data import synthetic

        return synthetic_audio_pose_clips(synthetic.SyntheticConfig(**dict(data_config.synthetic)), split,
                                          audio_encoder)
    if data_config.source == "prepared":
        return audio_pose_clips(data_config.root, split, audio_encoder)
    raise ValueError(f"data.source must be 'prepared' or 'synthetic', got {data_config.source!r}")


class CappWindowSource:
    """grain RandomAccessDataSource of CAPP training pairs. Item i is a group of `group` windows of one clip, the
    first starting at frame `stride * j` and each next one `spacing` frames later (every start where the whole
    group fits), as {"pose" [G, W, 3], "audio" [G, W, A]} made relative to their window (`pose_input`,
    `audio_input`). The windows of a group are each other's hard negatives: the same speaker, voice and head,
    told apart only by how the pose moves with the speech at that moment. Without them a small dataset is learnt
    by heart (which clip a pose fragment and an audio fragment come from) and nothing generalises."""

    def __init__(self, clips: List[Dict[str, np.ndarray]], window: int, stride: int, group: int = 1,
                 spacing: int = 0):
        self.clips, self.window, self.stride = clips, int(window), max(1, int(stride))
        self.group, self.spacing = max(1, int(group)), int(spacing)
        span = self.window + (self.group - 1) * self.spacing
        self.index = [(c, start) for c, clip in enumerate(clips)
                      for start in range(0, len(clip["angles"]) - span + 1, self.stride)]
        if not self.index:
            longest = max((len(clip["angles"]) for clip in clips), default=0)
            raise ValueError(f"no clip with speech is at least {span} frames long ({len(clips)} clips, the longest "
                             f"{longest} frames)")

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i) -> Dict[str, np.ndarray]:
        c, first = self.index[int(i)]
        clip = self.clips[c]
        starts = [first + j * self.spacing for j in range(self.group)]
        return {"pose": np.stack([pose_input(clip["angles"][s : s + self.window]) for s in starts]),
                "audio": np.stack([audio_input(clip["features"][s : s + self.window]) for s in starts])}
