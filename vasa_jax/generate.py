"""Portrait + speech -> talking-head video (VASA-1 section 3.3): encode the face once with stage 1, generate the
motion window by window with stage 2, render every frame with stage 1's decoder, write an mp4 with the speech.

  python -m vasa_jax.generate --image FACE.jpg --audio SPEECH.wav --out OUT.mp4 --model MODEL_DIR
  python -m vasa_jax.generate --image FACE.jpg --audio SPEECH.wav --out OUT.mp4 --stage1 DIR --stage2 DIR
      [--gaze THETA,PHI] [--distance D] [--emotion NAME|v1,v2,...] [--audio_guidance 0.5] [--gaze_guidance 1.0]
      [--num_steps 50] [--seed 0] [--resolution S] [--crop face|liveportrait|center] [--paste_back]

Python:
  pipeline = TalkingHeadPipeline.from_model(model_dir)   # python -m vasa_jax.export; or .from_workdirs(s1, s2)
  video = pipeline.generate("face.jpg", "speech.wav")             # frames uint8 [T, H, W, 3] + 16 kHz audio
  for frames in pipeline.stream("face.jpg", audio_chunks): ...     # frames as soon as each window is ready

The face of the photo is found and cropped as the data preparation crops video frames (MediaPipe Face Mesh, the
same framing, eyes levelled: `vasa_jax.data.face`); a photo with no face is an error, one with several faces
animates the largest, with a warning. `crop="liveportrait"` frames it as LivePortrait's published weights expect
(the default for them), `crop="center"` takes the centred square instead, for a photo already framed like the
training data (the synthetic heads). `paste_back=True` puts the animated crop back into the whole photo.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
import warnings
from typing import TYPE_CHECKING, Iterable, Iterator, Mapping, Optional, Sequence

import numpy as np

from vasa_jax import storage
from vasa_jax.audio import SAMPLE_RATE, VIDEO_FPS, encoder_from_description, load_audio, stream_frame_features
from vasa_jax.data import emotion as emotion_data

if TYPE_CHECKING:  # JAX is imported when a model is built, not before: a bad flag is reported at once
    from vasa_jax.sampling import Controls, MotionSampler

POSE_DIM = 7  # z_pose: yaw, pitch, roll, translation (3), scale; the rest of a motion vector is z_dyn
# Emotion presets: one-hot directions of the emotion condition, by its size: the 8 classes of HSEmotion (real data)
# or the 4 emotions of the synthetic heads.
EMOTION_PRESETS = {
    len(emotion_data.HSEMOTION_CLASSES): emotion_data.HSEMOTION_CLASSES,
    4: ("neutral", "happy", "angry", "surprised"),  # vasa_jax.data.synthetic.EMOTIONS
}


class GenerationError(ValueError):
    """Bad input to generation: an unreadable image, mismatched checkpoints, bad controls."""


@dataclasses.dataclass
class GeneratedVideo:
    frames: np.ndarray  # uint8 [T, H, W, 3]
    audio: np.ndarray  # float32 [N] mono at sample_rate
    sample_rate: int = SAMPLE_RATE
    fps: float = VIDEO_FPS


# Pillow's single-channel modes wider than 8 bits, with the value that is white in each: 16-bit PNG and TIFF open
# as "I;16*" or as 32-bit "I" holding 16-bit values; "F" (float TIFF) holds [0, 1]. Pillow's own conversion to RGB
# clips them at 255, which turned every such photo white.
_WIDE_GRAY_WHITE = {"I;16": 65535.0, "I;16L": 65535.0, "I;16B": 65535.0, "I;16N": 65535.0, "I": 65535.0, "F": 1.0}


def load_image(image) -> np.ndarray:
    """A photo (path, PIL image or array) as float32 RGB [H, W, 3] in [0, 1]. The EXIF orientation is applied (a
    phone's portrait photo comes upright); grayscale of any depth is scaled by its own white and replicated to
    RGB; palette images are expanded; transparency is composited over white. Truncated or non-image files raise
    GenerationError."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if isinstance(image, np.ndarray):
        array = image
        if array.dtype == np.uint8:
            array = array.astype(np.float32) / 255.0
        array = np.asarray(array, np.float32)
        if array.ndim == 2:
            array = array[..., None]
        if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
            raise GenerationError(f"an image array must be [H, W], [H, W, 1], [H, W, 3] or [H, W, 4], got {array.shape}")
        if array.shape[2] == 4:
            array = array[..., :3] * array[..., 3:] + (1.0 - array[..., 3:])
        return np.ascontiguousarray(np.broadcast_to(array, array.shape[:2] + (3,)))
    try:
        picture = image if isinstance(image, Image.Image) else Image.open(os.fspath(image))
        picture.load()  # decodes now: a truncated file fails here, not later
    except FileNotFoundError:
        raise GenerationError(f"{image}: no such image file") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise GenerationError(f"{image}: not a readable image ({err})") from None
    picture = ImageOps.exif_transpose(picture)
    if picture.mode in _WIDE_GRAY_WHITE:
        gray = np.asarray(picture, np.float32) / _WIDE_GRAY_WHITE[picture.mode]
        return load_image(np.clip(gray, 0.0, 1.0))
    if picture.mode in ("RGBA", "LA", "PA") or (picture.mode == "P" and "transparency" in picture.info):
        picture = picture.convert("RGBA")
        white = Image.new("RGBA", picture.size, (255, 255, 255, 255))
        picture = Image.alpha_composite(white, picture)
    return np.asarray(picture.convert("RGB"), np.float32) / 255.0


CROPS = ("face", "liveportrait", "center")


def sidecar_path(video_path: str) -> str:
    """Where the command line records how a video was generated (its inputs and controls), beside the video:
    `python -m vasa_jax.evaluate videos` reads the requested gaze and distance (E_g, E_d) and the portrait (CSIM)
    from it."""
    return os.fspath(video_path) + ".json"


@dataclasses.dataclass
class Portrait:
    photo: np.ndarray  # float32 RGB [H, W, 3] in [0, 1]: the whole input photo
    box: np.ndarray  # (centre x, centre y, side, angle) of the crop in the photo (vasa_jax.data.face.crop_boxes)
    crop: np.ndarray  # float32 [S, S, 3]: what stage 1 encodes
    faces: int  # faces found in the photo (0 with crop="center", which does not look)


def portrait_crop(photo: np.ndarray, size: int, crop: str = "face") -> Portrait:
    """The square the model animates: around the photo's largest face, framed and levelled as the data
    preparation frames video (crop="face") or as LivePortrait frames faces (crop="liveportrait"), or the centred
    square (crop="center"); resized to size x size. Raises GenerationError when no face is found where one is
    looked for; warns when there are several."""
    from vasa_jax.data import face

    height, width = photo.shape[:2]
    if crop == "center":
        box, count = np.array([width / 2, height / 2, min(height, width), 0.0]), 0
    elif crop in ("face", "liveportrait"):
        with face.FaceMesh(max_faces=4) as mesh:
            faces = mesh(np.round(np.clip(photo, 0, 1) * 255).astype(np.uint8))
        if not faces:
            raise GenerationError("no face found in the photo (give a photo with a visible face, or crop='center' "
                                  "for a photo already framed like the training data)")
        if len(faces) > 1:
            warnings.warn(f"{len(faces)} faces in the photo: animating the largest")
        boxes = face.crop_boxes if crop == "face" else face.liveportrait_crop_boxes
        box, count = boxes(faces[0]), len(faces)
    else:
        raise GenerationError(f"crop {crop!r}: expected one of {CROPS}")
    square = np.clip(face.apply_crop(photo.astype(np.float32), box, size), 0.0, 1.0)
    return Portrait(photo=photo, box=box, crop=square.astype(np.float32), faces=count)


def emotion_vector(emotion, dim: int, classes: Sequence[str] = ()) -> Optional[np.ndarray]:
    """None, a class name (`classes`, the ones the model's data recorded; else EMOTION_PRESETS for its emotion
    size) or a vector of `dim` numbers -> the emotion condition."""
    if emotion is None:
        return None
    if dim == 0:
        raise GenerationError("this model was trained without emotion labels: it takes no emotion")
    if isinstance(emotion, str):
        name = emotion.strip().lower()
        presets = tuple(classes) or EMOTION_PRESETS.get(dim, ())
        if name in presets:
            return np.eye(dim, dtype=np.float32)[presets.index(name)]
        try:
            emotion = [float(v) for v in name.split(",")]
        except ValueError:
            raise GenerationError(f"emotion {emotion!r}: expected one of {presets} or {dim} comma-separated "
                                  "numbers") from None
    vector = np.asarray(emotion, np.float32).reshape(-1)
    if vector.shape != (dim,):
        raise GenerationError(f"the emotion vector needs {dim} values, got {vector.size}")
    return vector


class TalkingHeadPipeline:
    """Stage 1 (face encoder and renderer) + stage 2 (motion sampler) + the audio encoder stage 2 was trained with.

    Every network call has one fixed shape per pipeline (frames are rendered in batches of `render_batch`,
    motion in windows of W), so a second `generate` compiles nothing."""

    def __init__(self, stage1, sampler: MotionSampler, audio_encoder, render_batch: int = 8,
                 output_size: Optional[int] = None, crop: Optional[str] = None, paste_back: bool = False,
                 emotion_classes: Sequence[str] = ()):
        """`stage1`: a `checkpoints.Stage1Model` (our face latent model or LivePortrait's renderer). `crop`: see
        `portrait_crop`; by default the framing the renderer was trained on (`stage1.framing`: "liveportrait"
        for LivePortrait's published weights, "face" for what trained on our prepared data)."""
        import jax

        self.stage1_cfg = stage1.model.cfg
        self.resolution = int(self.stage1_cfg.image_size)  # what the encoders read
        self.render_size = int(self.stage1_cfg.output_size)  # what the decoder renders
        self.sampler = sampler
        self.audio_encoder = audio_encoder
        self.render_batch = int(render_batch)
        if output_size is not None and (output_size <= 0 or output_size % 2):
            raise GenerationError(f"the output size must be a positive even number (H.264), got {output_size}")
        self.output_size = output_size
        if crop is None:
            crop = stage1.framing
        if crop not in CROPS:
            raise GenerationError(f"crop {crop!r}: expected one of {CROPS}")
        self.crop, self.paste_back = crop, bool(paste_back)
        self.emotion_classes = tuple(emotion_classes)  # names of the emotion condition's entries, if recorded
        dyn_dim = self.stage1_cfg.dynamics_dim
        if sampler.cfg.motion_dim != POSE_DIM + dyn_dim:
            raise GenerationError(
                f"mismatched checkpoints: stage 2 generates {sampler.cfg.motion_dim}-d motion, the stage-1 model "
                f"renders {POSE_DIM} + {dyn_dim} = {POSE_DIM + dyn_dim}")
        if sampler.cfg.audio_dim != audio_encoder.feature_dim:
            raise GenerationError(f"mismatched audio encoder: stage 2 expects {sampler.cfg.audio_dim}-d features, "
                                  f"{audio_encoder!r} gives {audio_encoder.feature_dim}")
        from vasa_jax.models.liveportrait import LivePortrait

        variables = stage1.variables
        self._encode = jax.jit(lambda x: stage1.model.apply(variables, x, method="encode"))
        # LivePortrait's stitching moves the driving keypoints so that what lies outside the face stays where the
        # photo has it: the pasted crop then joins the photo.
        decode_options = {"stitch": True} if self.paste_back and isinstance(stage1.model, LivePortrait) else {}

        def decode(source, pose, dyn):
            b = pose.shape[0]
            tile = lambda x: jax.numpy.broadcast_to(x, (b,) + x.shape[1:])
            image = stage1.model.apply(
                variables, tile(source["volume"]), tile(source["z_id"]), tile(source["pose"]),
                tile(source["dyn"]), pose, dyn, tile(source["image"]), method="decode", **decode_options)
            return jax.numpy.round(jax.numpy.clip(image, 0.0, 1.0) * 255.0).astype(jax.numpy.uint8)

        self._decode = jax.jit(decode)
        self.last_stream_latency: Optional[float] = None

    @classmethod
    def from_workdirs(cls, stage1_dir: str, stage2_dir: str, audio_encoder=None, **kwargs) -> "TalkingHeadPipeline":
        """From the latest checkpoints of a stage-1 and a stage-2 training workdir. The audio encoder is rebuilt
        from the stage-2 dataset's manifest (a Wav2Vec2 one from the checkpoint folder it names) unless given."""
        from vasa_jax import checkpoints
        from vasa_jax.data import motion as motion_data
        from vasa_jax.sampling import MotionSampler

        for name, directory in (("stage1", stage1_dir), ("stage2", stage2_dir)):  # a workdir may be a URL
            if not directory or not storage.isdir(storage.location(directory)):
                raise GenerationError(f"--{name} {directory!r} is not a directory")
        from vasa_jax.models import liveportrait

        try:
            # A folder of LivePortrait's published files is a stage 1 without a training config.
            is_imported = liveportrait.is_checkpoint_folder(stage1_dir)
            stage1_config = None if is_imported else checkpoints.read_config(stage1_dir)
            stage2_config = checkpoints.read_config(stage2_dir)
        except FileNotFoundError as err:
            raise GenerationError(str(err)) from None
        if stage1_config is not None and stage1_config.get("task", "stage1") not in checkpoints.STAGE1_TASKS:
            raise GenerationError(f"{stage1_dir} is a {stage1_config.task} workdir, not a stage-1 one")
        if stage2_config.get("task") != "stage2":
            raise GenerationError(f"{stage2_dir} is a {stage2_config.get('task', 'stage1')} workdir, not a stage-2 one")
        manifest_path = storage.join(stage2_config.data.root, motion_data.MANIFEST)
        if not storage.exists(manifest_path):
            raise GenerationError(f"{manifest_path} (the stage-2 motion dataset's manifest, for its normalisation "
                                  "statistics and audio encoder) is missing")
        manifest = motion_data.read_json(manifest_path)
        if manifest.get("motion_source") != "stage1":
            raise GenerationError(f"mismatched checkpoints: {stage2_dir} was trained on "
                                  f"{manifest.get('motion_source')!r} motion, not on stage-1 latents")
        trained_with = manifest.get("stage1_workdir")
        if trained_with and storage.canonical(trained_with) != storage.canonical(stage1_dir):
            warnings.warn(f"stage 2 was trained on latents of {trained_with}, not of {stage1_dir}")
        if audio_encoder is None:  # the one the motion dataset was encoded with
            try:
                audio_encoder = encoder_from_description(manifest.get("audio_encoder", ""))
            except (ValueError, OSError) as err:
                raise GenerationError(f"the audio encoder stage 2 was trained with: {err}") from None
        try:
            stage1 = checkpoints.load_stage1(stage1_dir)
        except (ValueError, OSError) as err:
            raise GenerationError(str(err)) from None
        sampler = MotionSampler.from_trained(checkpoints.load_stage2(stage2_dir))
        kwargs.setdefault("emotion_classes", manifest.get("emotion_classes", ()))
        return cls(stage1, sampler, audio_encoder, **kwargs)

    @classmethod
    def from_model(cls, model_dir: str, audio_encoder=None, **kwargs) -> "TalkingHeadPipeline":
        """From an exported model folder (`python -m vasa_jax.export`; a local folder or an object store's URL): no
        workdir or dataset needed."""
        from vasa_jax import checkpoints
        from vasa_jax.sampling import MotionSampler

        try:
            if not model_dir or not storage.isdir(storage.location(model_dir)):
                raise GenerationError(f"--model {model_dir!r} is not a directory")
            model = checkpoints.load_model(model_dir)
            if audio_encoder is None:
                audio_encoder = encoder_from_description(model.audio_encoder, checkpoint_dir=model.audio_encoder_dir)
        except (ValueError, OSError) as err:
            raise GenerationError(str(err)) from None
        kwargs.setdefault("emotion_classes", model.emotion_classes)
        return cls(model.stage1, MotionSampler.from_trained(model.stage2), audio_encoder, **kwargs)

    # ------------------------------------------------------------------------------------------------ pieces
    def encode_source(self, image) -> dict:
        """The portrait's latents (computed once per video), the portrait itself ("portrait": `Portrait`) and, for
        paste-back, the photo the frames go into ("backdrop": float [H, W, 3] in 0..255 at the output size, even
        sides) with the crop's box in its pixels ("backdrop_box")."""
        portrait = portrait_crop(load_image(image), self.resolution, self.crop)
        source_image = portrait.crop[None]
        volume, z_id, pose, dyn = self._encode(source_image)
        source = {"volume": volume, "z_id": z_id, "pose": pose, "dyn": dyn, "image": source_image,
                  "portrait": portrait}
        if self.paste_back:
            source["backdrop"], source["backdrop_box"] = self._backdrop(portrait)
        return source

    def _backdrop(self, portrait: Portrait):
        """The photo scaled to `output_size` on its longer side when set, its last row or column dropped where a
        side is odd (H.264 needs even sizes), and the crop's box in the scaled photo."""
        import cv2

        photo, box = portrait.photo, portrait.box
        if self.output_size:
            scale = self.output_size / max(photo.shape[:2])
            size = (max(2, round(photo.shape[1] * scale)), max(2, round(photo.shape[0] * scale)))
            photo = cv2.resize(photo, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
            box = box * np.array([scale, scale, scale, 1.0])
        height, width = photo.shape[0] // 2 * 2, photo.shape[1] // 2 * 2
        return np.clip(photo[:height, :width], 0, 1) * 255.0, box

    def frame_size(self, source: Mapping) -> tuple:
        """(height, width) of the frames this pipeline produces for an encoded source."""
        if self.paste_back:
            return source["backdrop"].shape[:2]
        size = self.output_size or self.render_size
        return size, size

    def render(self, source: Mapping, motion: np.ndarray) -> np.ndarray:
        """Frames uint8 [T, H, W, 3] for motion [T, 7 + dynamics_dim] (stage-1 units): the animated crop at `output_size`
        when set (bicubic resize of what the decoder renders), else at the decoder's size; with paste-back, the
        whole photo at `frame_size`."""
        motion = np.asarray(motion, np.float32)
        latents = {k: source[k] for k in ("volume", "z_id", "pose", "dyn", "image")}  # the decoder's inputs
        frames = []
        for start in range(0, len(motion), self.render_batch):
            chunk = motion[start : start + self.render_batch]
            n = len(chunk)
            if n < self.render_batch:  # one compiled shape
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], self.render_batch - n, axis=0)])
            pose, dyn = chunk[:, :POSE_DIM], chunk[:, POSE_DIM:]
            frames.append(np.asarray(self._decode(latents, pose, dyn))[:n])
        if not frames:
            return np.zeros((0,) + self.frame_size(source) + (3,), np.uint8)
        frames = np.concatenate(frames)
        if self.paste_back:
            from vasa_jax.data import face

            return face.paste_back(source["backdrop"], source["backdrop_box"], frames)
        size = self.output_size or self.render_size
        if size != self.render_size:
            import cv2

            frames = np.stack([cv2.resize(f, (size, size), interpolation=cv2.INTER_CUBIC) for f in frames])
        return frames

    def _controls(self, gaze, distance, emotion) -> Controls:
        """The controls as the sampler takes them, refused (GenerationError) outside what the model was trained on."""
        from vasa_jax.sampling import Controls, check_controls

        controls = Controls(gaze=None if gaze is None else np.asarray(gaze, np.float32).reshape(-1),
                            distance=distance,
                            emotion=emotion_vector(emotion, self.sampler.cfg.emotion_dim, self.emotion_classes))
        try:
            check_controls(controls, self.sampler.stats)
        except ValueError as err:
            raise GenerationError(str(err)) from None
        return controls

    # ------------------------------------------------------------------------------------------------ public
    def generate(self, image, audio, *, gaze=None, distance=None, emotion=None, num_steps: int = 50,
                 guidance: Mapping[str, float] = (("audio", 0.5), ("gaze", 1.0)), seed: int = 0) -> GeneratedVideo:
        """The whole video for a photo and speech (a path or a 16 kHz mono waveform)."""
        controls = self._controls(gaze, distance, emotion)
        waveform = load_audio(audio) if not isinstance(audio, np.ndarray) else np.asarray(audio, np.float32)
        source = self.encode_source(image)
        frames = list(self._frames(source, [waveform], controls, num_steps, guidance, seed))
        frames = np.concatenate(frames) if frames else np.zeros((0,) + self.frame_size(source) + (3,), np.uint8)
        return GeneratedVideo(frames=frames, audio=waveform)

    def stream(self, image, audio_chunks: Iterable[np.ndarray], *, gaze=None, distance=None, emotion=None,
               num_steps: int = 50, guidance: Mapping[str, float] = (("audio", 0.5), ("gaze", 1.0)),
               seed: int = 0) -> Iterator[np.ndarray]:
        """Rendered frames [n, H, W, 3], yielded window by window while 16 kHz mono audio chunks arrive. The same
        seed gives the same frames as `generate` (the features follow `vasa_jax.audio.stream_frame_features`: a
        window is generated once its audio and `audio_encoder.context.lookahead_seconds` more have arrived).
        `last_stream_latency` holds the seconds from the first audio chunk to the first frames. `image` is a photo
        or what `encode_source` returned for one. The controls and the photo are checked when called, before the
        first chunk is asked for."""
        controls = self._controls(gaze, distance, emotion)
        source = image if isinstance(image, Mapping) else self.encode_source(image)
        return self._frames(source, audio_chunks, controls, num_steps, guidance, seed)

    def _frames(self, source, audio_chunks, controls, num_steps, guidance, seed) -> Iterator[np.ndarray]:
        self.last_stream_latency = None
        started = None

        def timed_chunks():
            nonlocal started
            for chunk in audio_chunks:
                if started is None:
                    started = time.perf_counter()
                yield np.asarray(chunk, np.float32).reshape(-1)

        features = _windows(stream_frame_features(timed_chunks(), self.audio_encoder), self.sampler.cfg.window)
        for motion in self.sampler.windows_from_chunks(features, controls=controls, num_steps=num_steps,
                                                       guidance=guidance, seed=seed):
            frames = self.render(source, motion)
            if self.last_stream_latency is None and started is not None:
                self.last_stream_latency = time.perf_counter() - started
            yield frames


def _windows(blocks: Iterable[np.ndarray], window: int) -> Iterator[np.ndarray]:
    """Rows regrouped into windows of `window` rows (the last may be shorter), each as soon as it is complete."""
    pending = []
    count = 0
    for rows in blocks:
        pending.append(rows)
        count += len(rows)
        while count >= window:
            rows = np.concatenate(pending)
            yield rows[:window]
            pending, count = [rows[window:]], count - window
    if count:
        yield np.concatenate(pending)


# ---------------------------------------------------------------------------------------------------- CLI
def checked_flags(f) -> Optional[list]:
    """Every control flag checked before any file is read (GenerationError naming the flag); returns the parsed
    --gaze. What needs the model (the distance range, the emotion vector's size) is checked once it is loaded."""

    def number(flag, text):
        try:
            value = float(text)
        except (TypeError, ValueError):
            raise GenerationError(f"--{flag}={text}: not a number") from None
        if not np.isfinite(value):
            raise GenerationError(f"--{flag}={text}: not a finite number")
        return value

    if bool(f.model) == bool(f.stage1 or f.stage2):
        raise GenerationError("give either --model (an exported model) or both --stage1 and --stage2 (workdirs)")
    if not f.model and not (f.stage1 and f.stage2):
        raise GenerationError("--stage1 and --stage2 go together (or give --model)")
    gaze = None
    if f.gaze is not None:
        parts = f.gaze.split(",")
        if len(parts) != 2:
            raise GenerationError(f"--gaze needs THETA,PHI in degrees, got {f.gaze!r}")
        gaze = [number("gaze", part) for part in parts]
        if max(abs(angle) for angle in gaze) > 90:
            raise GenerationError(f"--gaze={f.gaze!r}: angles are degrees within [-90, 90]")
    if f.distance is not None:
        number("distance", f.distance)
    for flag in ("audio_guidance", "gaze_guidance"):
        if number(flag, getattr(f, flag)) < 0:
            raise GenerationError(f"--{flag}={getattr(f, flag)}: a guidance scale is at least 0")
    if f.num_steps < 1:
        raise GenerationError(f"--num_steps={f.num_steps}: at least 1 DDIM step")
    if f.resolution is not None and (f.resolution <= 0 or f.resolution % 2):
        raise GenerationError(f"--resolution={f.resolution}: a positive even number (H.264)")
    if f.emotion is not None:
        name = f.emotion.strip().lower()
        presets = sorted({preset for names in EMOTION_PRESETS.values() for preset in names})
        if name not in presets:
            try:
                for part in name.split(","):
                    number("emotion", part)
            except GenerationError:
                raise GenerationError(f"--emotion={f.emotion!r}: a preset ({', '.join(presets)}) or comma-separated "
                                      "numbers") from None
    return gaze


def main(argv):
    del argv
    from absl import flags, logging

    logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint read at INFO

    from vasa_jax.video import write_mp4

    f = flags.FLAGS
    try:
        gaze = checked_flags(f)
        image = load_image(f.image)  # the inputs first: a bad file fails before any checkpoint is read
        audio = load_audio(f.audio)
        options = dict(output_size=f.resolution, crop=f.crop, paste_back=f.paste_back)
        if f.model:
            pipeline = TalkingHeadPipeline.from_model(f.model, **options)
        else:
            pipeline = TalkingHeadPipeline.from_workdirs(f.stage1, f.stage2, **options)
        started = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            source = pipeline.encode_source(image)
        for warning in caught:
            print(f"warning: {warning.message}", file=sys.stderr)
        # Frames go to the encoder window by window: memory stays bounded however long the speech is.
        windows = pipeline.stream(source, [audio], gaze=gaze, distance=f.distance, emotion=f.emotion,
                                  num_steps=f.num_steps, seed=f.seed,
                                  guidance={"audio": f.audio_guidance, "gaze": f.gaze_guidance})
        count = [0]

        def frames():
            for chunk in windows:
                count[0] += len(chunk)
                yield from chunk

        write_mp4(f.out, frames(), fps=int(VIDEO_FPS), audio=audio, sample_rate=SAMPLE_RATE)
        elapsed = time.perf_counter() - started

        storage.write_json(sidecar_path(f.out), {
            "image": os.path.abspath(f.image), "audio": os.path.abspath(f.audio),
            "gaze": None if gaze is None else [float(v) for v in gaze], "distance": f.distance,
            "emotion": f.emotion, "audio_guidance": f.audio_guidance, "gaze_guidance": f.gaze_guidance,
            "num_steps": f.num_steps, "seed": f.seed, "crop": pipeline.crop, "paste_back": bool(f.paste_back),
            "model": f.model, "stage1": f.stage1, "stage2": f.stage2,
        })
    except (ValueError, OSError) as err:  # GenerationError and AudioError are ValueErrors
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    height, width = pipeline.frame_size(source)
    print(f"{f.out}: {count[0]} frames ({count[0] / VIDEO_FPS:.2f} s) at {width}x{height}, "
          f"generated and encoded in {elapsed:.1f} s")


if __name__ == "__main__":
    from absl import app, flags

    flags.DEFINE_string("image", None, "portrait photo", required=True)
    flags.DEFINE_string("audio", None, "speech: wav, flac, ogg, mp3, or any container FFmpeg reads (m4a, the audio "
                        "of an mp4/mov/mkv/webm video); any rate and channel count", required=True)
    flags.DEFINE_string("out", None, "output mp4", required=True)
    flags.DEFINE_string("model", None, "an exported model folder (python -m vasa_jax.export)")
    flags.DEFINE_string("stage1", None, "stage-1 training workdir (instead of --model)")
    flags.DEFINE_string("stage2", None, "stage-2 training workdir (instead of --model)")
    flags.DEFINE_string("gaze", None, "main gaze THETA,PHI in degrees (default: not controlled)")
    flags.DEFINE_float("distance", None, "head distance, in the dataset's units (default: not controlled)")
    flags.DEFINE_string("emotion", None, "emotion preset (8-d models: HSEmotion's classes, e.g. happiness; "
                        "synthetic 4-d models: neutral, happy, angry, surprised) or a comma-separated vector")
    flags.DEFINE_float("audio_guidance", 0.5, "classifier-free guidance scale of the audio")
    flags.DEFINE_float("gaze_guidance", 1.0, "classifier-free guidance scale of the gaze")
    flags.DEFINE_integer("num_steps", 50, "DDIM steps")
    flags.DEFINE_integer("seed", 0, "random seed")
    flags.DEFINE_integer("resolution", None, "output frame size (default: the stage-1 model's); even. With "
                         "--paste_back: the longer side of the output photo (default: the photo's own)")
    flags.DEFINE_enum("crop", None, list(CROPS), "face: find the face and frame it as the training data; "
                      "liveportrait: as LivePortrait frames faces; center: the centred square, for a photo already "
                      "framed like the training data (default: the stage-1 model's framing)")
    flags.DEFINE_bool("paste_back", False, "put the animated face back into the whole photo")
    app.run(main)
