"""Per-clip emotion vectors from an ONNX facial-expression classifier (optional; e.g. HSEmotion's `enet_b0_8_*`
models, whose 8 classes are `HSEMOTION_CLASSES`), run with onnxruntime on tight face crops.

Preprocessing follows HSEmotion's: the face's box (here the square around its 468 mesh points) resized to the
model's input size, RGB scaled to [0, 1] and normalised with the ImageNet mean and std, NCHW float32.
"""

from __future__ import annotations

import functools
import os
from typing import Sequence

import numpy as np

from vasa_jax.data import face

# The classes of HSEmotion's 8-class models, in their output order.
HSEMOTION_CLASSES = ("anger", "contempt", "disgust", "fear", "happiness", "neutral", "sadness", "surprise")
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
DEFAULT_INPUT_SIZE = 224


class EmotionModel:
    """An ONNX classifier of face crops. `outputs`: "logits" (softmax applied) or "probabilities" (used as is)."""

    def __init__(self, path: str, outputs: str = "logits"):
        if outputs not in ("logits", "probabilities"):
            raise ValueError(f"outputs must be 'logits' or 'probabilities', got {outputs!r}")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"emotion model {path}: file not found")
        try:
            import onnxruntime
        except ImportError as error:
            raise face.FaceAnalysisError("onnxruntime is not installed: pip install -r requirements.txt") from error
        self.path, self.outputs = path, outputs
        self.session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        model_input = self.session.get_inputs()[0]
        self.input_name = model_input.name
        shape = model_input.shape  # [N, 3, H, W]; symbolic dimensions are strings or None
        if len(shape) != 4 or shape[1] not in (3, "3"):
            raise ValueError(f"emotion model {path}: expected an NCHW RGB input, got shape {shape}")
        self.input_size = shape[2] if isinstance(shape[2], int) else DEFAULT_INPUT_SIZE
        self.batch = shape[0] if isinstance(shape[0], int) else None

    def preprocess(self, crops: np.ndarray) -> np.ndarray:
        """uint8 RGB [N, S, S, 3] at the input size -> normalised float32 [N, 3, S, S]."""
        x = (crops.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))

    def probabilities(self, crops: np.ndarray) -> np.ndarray:
        """Class probabilities [N, E] of face crops uint8 [N, S, S, 3]."""
        inputs = self.preprocess(crops)
        step = self.batch or len(inputs)
        scores = np.concatenate([
            self.session.run(None, {self.input_name: inputs[i : i + step]})[0] for i in range(0, len(inputs), step)
        ]).astype(np.float64)
        if self.outputs == "logits":
            scores = np.exp(scores - scores.max(axis=1, keepdims=True))
            scores /= scores.sum(axis=1, keepdims=True)
        return scores.astype(np.float32)


@functools.lru_cache(maxsize=2)
def load_emotion_model(path: str) -> EmotionModel:
    """One model per path and process (preparation workers classify many clips)."""
    return EmotionModel(path)


def tight_face_crop(image: np.ndarray, landmarks: np.ndarray, size: int) -> np.ndarray:
    """The square around the face's mesh points (irises excluded), resized to size x size, uint8 RGB."""
    points = landmarks[: face.FACE_MESH_POINTS, :2]
    low, high = points.min(axis=0), points.max(axis=0)
    centre, side = (low + high) / 2, float(max(high - low))
    return face.apply_crop(image, np.array([centre[0], centre[1], side, 0.0]), size)


def clip_emotion(model: EmotionModel, images: Sequence[np.ndarray], landmarks: Sequence[np.ndarray]) -> np.ndarray:
    """Mean class probabilities [E] over the given frames of a clip (images uint8 RGB, landmarks in their pixels)."""
    crops = np.stack([tight_face_crop(i, l, model.input_size) for i, l in zip(images, landmarks)])
    return model.probabilities(crops).mean(axis=0)
