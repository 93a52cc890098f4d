"""Generation end to end with tiny checkpoints: the mp4, streaming against offline, and bad input."""

import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile

from test_train_stage1 import ROOT, _train_command
from vasa_jax import video
from vasa_jax.audio import SAMPLE_RATE, num_video_frames
from vasa_jax.generate import GenerationError, TalkingHeadPipeline, load_image

ONE_DEVICE = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")


def _run(*args, check=True):
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=ONE_DEVICE, check=check,
                          capture_output=True, text=True)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A barely trained 32x32 stage 1, its motion dataset, and a barely trained tiny stage 2 on it."""
    root = tmp_path_factory.mktemp("generate")
    stage1, motion, stage2 = str(root / "stage1"), str(root / "motion"), str(root / "stage2")
    subprocess.run(_train_command(stage1, 1, 1), cwd=ROOT, env=ONE_DEVICE, check=True, capture_output=True)
    _run("vasa_jax.data.encode_motion", f"--output={motion}", f"--stage1={stage1}", "--batch_size=50")
    _run("vasa_jax.train", "--config=configs/stage2.py:tiny", f"--workdir={stage2}", f"--config.data.root={motion}",
         "--config.train.num_steps=2", "--config.train.checkpoint_every=2", "--config.train.eval_every=2",
         "--config.data.eval_windows=8")
    return root, stage1, stage2


@pytest.fixture(scope="module")
def portrait(checkpoints):
    """A synthetic head photo, saved as a JPEG."""
    from vasa_jax.data import synthetic

    root = checkpoints[0]
    identity = synthetic.get_identity(synthetic.TEST_ID_OFFSET, 0)
    frame = synthetic.render_clip(synthetic.make_clip(1, identity, 1), 96)[0]
    path = str(root / "face.jpg")
    from PIL import Image

    Image.fromarray(frame).save(path, quality=95)
    return path


def _speech(seconds, rate=SAMPLE_RATE, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 3 * t)) / 2
            + 0.01 * rng.normal(size=t.shape)).astype(np.float32)


def test_command_line_writes_a_decodable_mp4_with_the_speech(checkpoints, portrait, tmp_path):
    _, stage1, stage2 = checkpoints
    seconds = 2.3
    audio_path = str(tmp_path / "speech.wav")
    soundfile.write(audio_path, _speech(seconds), SAMPLE_RATE)
    out = str(tmp_path / "out.mp4")
    result = _run("vasa_jax.generate", f"--image={portrait}", f"--audio={audio_path}", f"--out={out}",
                  f"--stage1={stage1}", f"--stage2={stage2}", "--num_steps=10", "--gaze=10,-5", "--emotion=happy",
                  "--resolution=48")
    assert os.path.isfile(out), result.stderr
    decoded = video.read_mp4(out)
    assert decoded["frames"].shape == (num_video_frames(int(seconds * SAMPLE_RATE)), 48, 48, 3)
    assert decoded["fps"] == 25.0 and decoded["sample_rate"] == SAMPLE_RATE
    assert decoded["audio_duration"] == pytest.approx(seconds, abs=1e-3)
    assert decoded["frames"].std() > 1.0  # a picture, not a blank
    # The sidecar records the inputs and controls, for `python -m vasa_jax.evaluate videos` (E_g, E_d, CSIM).
    import json

    from vasa_jax.generate import sidecar_path

    record = json.load(open(sidecar_path(out)))
    assert record["gaze"] == [10.0, -5.0] and record["emotion"] == "happy" and record["distance"] is None
    assert record["image"] == os.path.abspath(portrait) and record["num_steps"] == 10 and record["crop"] == "face"


def test_streaming_gives_the_offline_frames_and_compiles_once(checkpoints, portrait):
    _, stage1, stage2 = checkpoints
    pipeline = TalkingHeadPipeline.from_workdirs(stage1, stage2)
    speech = _speech(3.1, seed=1)
    offline = pipeline.generate(portrait, speech, num_steps=10, seed=5)
    assert offline.frames.shape[0] == num_video_frames(len(speech))
    compiled = (pipeline._decode._cache_size(), pipeline._encode._cache_size())
    chunks = [speech[i : i + 4000] for i in range(0, len(speech), 4000)]  # 0.25 s pieces
    streamed = list(pipeline.stream(portrait, iter(chunks), num_steps=10, seed=5))
    assert len(streamed) > 1 and pipeline.last_stream_latency is not None and pipeline.last_stream_latency > 0
    np.testing.assert_array_equal(np.concatenate(streamed), offline.frames)
    assert (pipeline._decode._cache_size(), pipeline._encode._cache_size()) == compiled
    other_seed = pipeline.generate(portrait, speech, num_steps=10, seed=6).frames
    assert np.abs(other_seed.astype(int) - offline.frames).max() > 0
    silent = pipeline.generate(portrait, np.zeros(SAMPLE_RATE, np.float32), num_steps=10, emotion="0.5,0.5,0,0")
    assert silent.frames.shape[0] == 25
    with pytest.raises(GenerationError, match="expected one of"):
        pipeline.generate(portrait, speech, emotion="elated")
    with pytest.raises(GenerationError, match="needs 4 values"):
        pipeline.generate(portrait, speech, emotion=[1.0, 0.0])


def test_grayscale_and_transparent_photos_load_as_rgb(tmp_path):
    from PIL import Image

    gray = tmp_path / "gray.png"
    Image.fromarray(np.full((40, 30), 128, np.uint8)).save(gray)
    assert load_image(str(gray)).shape == (40, 30, 3)
    rgba = np.zeros((20, 20, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:10, :, 3] = 255  # top half opaque red, bottom half transparent
    path = tmp_path / "rgba.png"
    Image.fromarray(rgba).save(path)
    image = load_image(str(path))
    np.testing.assert_allclose(image[0, 0], [1.0, 0.0, 0.0])
    np.testing.assert_allclose(image[-1, 0], [1.0, 1.0, 1.0])  # composited over white


def test_wide_grayscale_palette_and_rotated_photos_load_as_shown(tmp_path):
    """A 16-bit grayscale PNG keeps its tones (Pillow's own conversion clipped it to white), a palette image its
    colours, and a JPEG with an EXIF orientation comes upright, as a phone or a viewer shows it."""
    from PIL import Image

    ramp = np.linspace(0, 65535, 40 * 30).reshape(40, 30).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "gray16.png")
    image = load_image(str(tmp_path / "gray16.png"))
    assert image.shape == (40, 30, 3)
    np.testing.assert_allclose(image[..., 1], ramp / 65535.0, atol=1e-6)
    palette = Image.fromarray(np.array([[[255, 0, 0], [0, 0, 255]]], np.uint8)).convert("P")
    np.testing.assert_allclose(load_image(palette)[0], [[1, 0, 0], [0, 0, 1]], atol=1e-6)

    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:, :20] = (255, 0, 0)  # left half red in the stored pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated 90 degrees clockwise: the stored left edge is the top
    Image.fromarray(stored).save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    upright = load_image(str(tmp_path / "rotated.jpg"))
    assert upright.shape == (40, 20, 3)
    assert upright[:15, :, 0].min() > 0.9 and upright[25:, :, 0].max() < 0.1


@pytest.mark.parametrize("case", ["no_face", "truncated_jpeg", "text_as_image", "empty_audio", "missing_checkpoint",
                                  "stage2_as_stage1", "ground_truth_stage2"])
def test_bad_input_is_a_one_line_error_and_leaves_no_file(checkpoints, portrait, tmp_path, case):
    root, stage1, stage2 = checkpoints
    image, audio_path = portrait, str(tmp_path / "speech.wav")
    soundfile.write(audio_path, _speech(1.0), SAMPLE_RATE)
    if case == "no_face":
        from PIL import Image

        image = str(tmp_path / "wall.png")
        y, x = np.mgrid[0:96, 0:96]
        Image.fromarray(np.stack([x * 2, y * 2, (x + y)], -1).astype(np.uint8)).save(image)
    elif case == "truncated_jpeg":
        data = open(portrait, "rb").read()
        image = str(tmp_path / "cut.jpg")
        open(image, "wb").write(data[: len(data) // 2])
    elif case == "text_as_image":
        image = str(tmp_path / "notes.jpg")
        open(image, "w").write("not a picture\n")
    elif case == "empty_audio":
        audio_path = str(tmp_path / "empty.wav")
        open(audio_path, "wb").close()
    elif case == "missing_checkpoint":
        stage1 = str(tmp_path / "nowhere")
    elif case == "stage2_as_stage1":
        stage1 = stage2
    elif case == "ground_truth_stage2":
        motion, stage2 = str(tmp_path / "gt_motion"), str(tmp_path / "gt_stage2")
        _run("vasa_jax.data.encode_motion", f"--output={motion}", "--motion=ground_truth")
        _run("vasa_jax.train", "--config=configs/stage2.py:tiny", f"--workdir={stage2}",
             f"--config.data.root={motion}", "--config.train.num_steps=1", "--config.train.checkpoint_every=1",
             "--config.train.eval_every=1", "--config.data.eval_windows=8")
    out = str(tmp_path / "out.mp4")
    result = _run("vasa_jax.generate", f"--image={image}", f"--audio={audio_path}", f"--out={out}",
                  f"--stage1={stage1}", f"--stage2={stage2}", "--num_steps=2", check=False)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert not os.path.exists(out) and not [p for p in os.listdir(tmp_path) if p.endswith(".partial.mp4")]
    print(case, errors[0])


@pytest.mark.parametrize("flag,message", [
    ("--gaze=abc,0", "--gaze=abc: not a number"), ("--gaze=1,2,3", "--gaze needs THETA,PHI"),
    ("--gaze=100,0", "within [-90, 90]"), ("--distance=nan", "--distance=nan: not a finite number"),
    ("--audio_guidance=-1", "--audio_guidance=-1.0: a guidance scale is at least 0"),
    ("--num_steps=0", "--num_steps=0: at least 1"), ("--resolution=15", "--resolution=15: a positive even"),
    ("--emotion=furious", "--emotion='furious': a preset (")])
def test_a_bad_flag_is_named_before_any_file_is_read(tmp_path, flag, message):
    """Checked before the photo, the speech or a checkpoint is opened: none of them exists here."""
    missing = str(tmp_path / "missing")
    result = _run("vasa_jax.generate", f"--image={missing}.jpg", f"--audio={missing}.wav", f"--out={missing}.mp4",
                  f"--stage1={missing}", f"--stage2={missing}", flag, check=False)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr


def test_a_distance_outside_the_training_range_is_refused_with_the_range(checkpoints):
    from vasa_jax.sampling import distance_range

    _, stage1, stage2 = checkpoints
    pipeline = TalkingHeadPipeline.from_workdirs(stage1, stage2, crop="center")
    low, high = distance_range(pipeline.sampler.stats)
    assert "distance_min" in pipeline.sampler.stats and low < high
    photo = np.zeros((32, 32, 3), np.float32)
    with pytest.raises(GenerationError, match=r"distance 1e\+09: outside the head distances the model was trained "
                                              r"on \[-?\d"):
        pipeline.generate(photo, _speech(0.2), distance=1e9, num_steps=1)
    with pytest.raises(GenerationError, match="outside the head distances"):
        pipeline.stream(photo, [_speech(0.2)], distance=high + (high - low))  # refused when called, not when iterated
    assert len(pipeline.generate(photo, _speech(0.2), distance=(low + high) / 2, num_steps=1).frames) == 5


def _two_heads(path):
    """Two synthetic heads side by side, the left one larger, saved as a PNG."""
    from PIL import Image

    from vasa_jax.data import synthetic

    heads = [synthetic.render_clip(synthetic.make_clip(1, synthetic.get_identity(synthetic.TEST_ID_OFFSET + i, 0), 1),
                                   size)[0] for i, size in enumerate((128, 96))]
    canvas = np.full((128, 240, 3), 200, np.uint8)
    canvas[:, :128] = heads[0]
    canvas[16:112, 136:232] = heads[1]
    Image.fromarray(canvas).save(path)


def test_two_faces_animate_the_largest_with_a_warning(checkpoints, tmp_path):
    _, stage1, stage2 = checkpoints
    image = str(tmp_path / "two.png")
    _two_heads(image)
    audio_path = str(tmp_path / "speech.wav")
    soundfile.write(audio_path, _speech(1.0), SAMPLE_RATE)
    out = str(tmp_path / "out.mp4")
    result = _run("vasa_jax.generate", f"--image={image}", f"--audio={audio_path}", f"--out={out}",
                  f"--stage1={stage1}", f"--stage2={stage2}", "--num_steps=2")
    assert "warning: 2 faces in the photo: animating the largest" in result.stderr, result.stderr
    assert os.path.isfile(out)
    from vasa_jax.generate import portrait_crop

    with pytest.warns(UserWarning, match="2 faces"):
        chosen = portrait_crop(load_image(image), 32)
    assert chosen.faces == 2 and chosen.box[0] < 128  # the larger, left head


def test_paste_back_puts_the_face_into_the_whole_photo(checkpoints, tmp_path):
    """The output is the whole photo (odd sizes trimmed to even for H.264); outside the face's crop it is the photo
    itself, inside it changes with the generated motion."""
    from PIL import Image

    from vasa_jax.data import synthetic

    _, stage1, stage2 = checkpoints
    head = synthetic.render_clip(synthetic.make_clip(1, synthetic.get_identity(synthetic.TEST_ID_OFFSET, 0), 1), 96)[0]
    photo = np.full((161, 201, 3), 90, np.uint8)
    photo[40:136, 90:186] = head
    path = str(tmp_path / "photo.png")
    Image.fromarray(photo).save(path)
    pipeline = TalkingHeadPipeline.from_workdirs(stage1, stage2, paste_back=True)
    result = pipeline.generate(path, _speech(1.0), num_steps=2)
    assert result.frames.shape == (25, 160, 200, 3)
    source = pipeline.encode_source(path)
    cx, cy, side, _ = source["portrait"].box
    far = np.ones((160, 200), bool)
    half = side / np.sqrt(2)  # the crop may be rotated: its corners reach this far from the centre
    far[int(max(cy - half, 0)) : int(cy + half) + 1, int(max(cx - half, 0)) : int(cx + half) + 1] = False
    assert far.sum() > 1000
    outside = result.frames[:, far]
    np.testing.assert_array_equal(outside, np.broadcast_to(photo[:160, :200][far], outside.shape))
    assert np.abs(result.frames[:, ~far].astype(int) - photo[:160, :200][~far]).mean() > 1.0
    wide = TalkingHeadPipeline.from_workdirs(stage1, stage2, paste_back=True, output_size=100)
    assert wide.generate(path, _speech(0.5), num_steps=2).frames.shape == (num_video_frames(8000), 80, 100, 3)


def test_pipeline_reports_a_missing_workdir_and_reads_url_workdirs(checkpoints, tmp_path):
    import warnings

    import jax

    _, stage1, stage2 = checkpoints
    with pytest.raises(GenerationError, match="not a directory"):
        TalkingHeadPipeline.from_workdirs(str(tmp_path / "missing"), stage2)
    with pytest.raises(ValueError, match="unsupported URL scheme memory://"):
        TalkingHeadPipeline.from_workdirs("memory://runs/stage1", stage2)
    # file:// URLs of the workdirs: the same models, and no warning that stage 2 was trained on another stage 1.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from_urls = TalkingHeadPipeline.from_workdirs(f"file://{stage1}", f"file://{stage2}")
    from_paths = TalkingHeadPipeline.from_workdirs(stage1, stage2)
    jax.tree.map(np.testing.assert_array_equal, from_urls.sampler.params, from_paths.sampler.params)
    from vasa_jax import checkpoints as checkpoints_lib

    jax.tree.map(np.testing.assert_array_equal, checkpoints_lib.load_stage1(f"file://{stage1}").params,
                 checkpoints_lib.load_stage1(stage1).params)


def test_trained_models_load_exactly_and_without_the_trainer(checkpoints, tmp_path):
    """`vasa_jax.checkpoints` restores each network's saved parameters bit for bit (against orbax's restore of the
    whole training state), and reading both models, as generation, evaluation and encode_motion do, imports no
    training module."""
    import jax
    import orbax.checkpoint as ocp

    from vasa_jax import checkpoints as checkpoints_lib

    _, stage1, stage2 = checkpoints
    for workdir, load, network in ((stage1, checkpoints_lib.load_stage1, "generator"),
                                   (stage2, checkpoints_lib.load_stage2, "dit")):
        manager = ocp.CheckpointManager(checkpoints_lib.checkpoint_directory(workdir))
        saved = manager.restore(manager.latest_step(), args=ocp.args.Composite(state=ocp.args.StandardRestore()))
        manager.close()
        saved, loaded = saved["state"]["params"][network], load(workdir).params
        assert jax.tree.structure(loaded) == jax.tree.structure(saved)
        jax.tree.map(np.testing.assert_array_equal, loaded, saved)
    trained = checkpoints_lib.load_stage2(stage2)
    assert trained.stats["motion_std"].shape == (trained.model_cfg.motion_dim,)
    with pytest.raises(ValueError, match="stage2 workdir, not a stage-1"):
        checkpoints_lib.load_stage1(stage2)
    with pytest.raises(FileNotFoundError, match="holds no checkpoints"):
        checkpoints_lib.load_stage2(str(tmp_path))

    code = ("import sys; from vasa_jax import checkpoints, evaluate, generate; "
            "from vasa_jax.data import encode_motion; "
            f"checkpoints.load_stage1({stage1!r}); checkpoints.load_stage2({stage2!r}); "
            "print(sorted(m for m in sys.modules if m.startswith('vasa_jax.train')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=ONE_DEVICE, check=True, capture_output=True,
                         text=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_an_exported_model_generates_what_the_workdirs_do(checkpoints, portrait, tmp_path, bucket):
    """`python -m vasa_jax.export` -> a folder that generates the workdirs' frames bit for bit, also read from a
    gs:// URL (conftest's `bucket`); parts that do not belong together, a non-model folder and an occupied
    destination are one-line refusals."""
    import shutil

    from safetensors.numpy import load_file, save_file

    _, stage1, stage2 = checkpoints
    model = str(tmp_path / "model")
    _run("vasa_jax.export", f"--stage1={stage1}", f"--stage2={stage2}", f"--out={model}")
    speech = _speech(1.3)
    from_workdirs = TalkingHeadPipeline.from_workdirs(stage1, stage2).generate(portrait, speech, num_steps=3)
    from_model = TalkingHeadPipeline.from_model(model).generate(portrait, speech, num_steps=3)
    np.testing.assert_array_equal(from_model.frames, from_workdirs.frames)
    shutil.copytree(model, bucket / "models" / "talking")
    from_url = TalkingHeadPipeline.from_model("gs://models/talking").generate(portrait, speech, num_steps=3)
    np.testing.assert_array_equal(from_url.frames, from_workdirs.frames)
    with pytest.raises(GenerationError, match="is not a directory"):
        TalkingHeadPipeline.from_model("gs://models/nothing")
    from vasa_jax.data import synthetic
    from vasa_jax.generate import emotion_vector

    assert TalkingHeadPipeline.from_model(model).emotion_classes == synthetic.EMOTIONS  # recorded, then used:
    np.testing.assert_array_equal(emotion_vector("b", 4, ("a", "b", "c", "d")), [0, 1, 0, 0])
    with pytest.raises(GenerationError, match="expected one of"):
        emotion_vector("happy", 4, ("a", "b", "c", "d"))
    card = open(os.path.join(model, "README.md")).read()
    assert "2 training steps" in card and "x0_mse_t50" in card

    again = _run("vasa_jax.export", f"--stage1={stage1}", f"--stage2={stage2}", f"--out={model}", check=False)
    assert again.returncode != 0 and "already exists" in again.stderr.strip().splitlines()[-1]
    # A stage-2 file from elsewhere (here: the same tensors, scaled) does not belong to this model.
    params = load_file(os.path.join(model, "stage2.safetensors"))
    save_file({k: v * 2 for k, v in params.items()}, os.path.join(model, "stage2.safetensors"))
    with pytest.raises(GenerationError, match="stage2.safetensors does not belong to this model"):
        TalkingHeadPipeline.from_model(model)
    with pytest.raises(GenerationError, match="is not an exported model"):
        TalkingHeadPipeline.from_model(stage1)
    wrong = _run("vasa_jax.generate", f"--image={portrait}", "--audio=/x.wav", f"--out={tmp_path / 'x.mp4'}",
                 f"--model={model}", f"--stage1={stage1}", check=False)
    assert wrong.returncode == 1 and "either --model" in wrong.stderr


def test_a_wav2vec2_trained_stage2_generates_through_the_command_line(checkpoints, portrait, tmp_path):
    """Stage 2 trained on Wav2Vec2 features (a tiny random Hugging Face checkpoint) generates with the command
    line from its workdirs (the encoder rebuilt from the motion dataset's description) and, exported, from the
    model folder alone once the Hugging Face folder is gone."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from test_wav2vec2 import TINY, VARIANTS

    _, stage1, _ = checkpoints
    hf_dir, motion, stage2 = tmp_path / "w2v", str(tmp_path / "motion"), str(tmp_path / "stage2")
    torch.manual_seed(0)
    transformers.Wav2Vec2Model(transformers.Wav2Vec2Config(**TINY, **VARIANTS["base"])).eval().save_pretrained(hf_dir)
    _run("vasa_jax.data.encode_motion", f"--output={motion}", f"--stage1={stage1}", "--batch_size=50",
         "--audio_encoder=wav2vec2", f"--wav2vec2_dir={hf_dir}")
    # Training's features are generation's: a clip's stored rows against frame_features of its speech here, with
    # the encoder generation rebuilds from the dataset's description. The same excerpts go through the same
    # compiled function, so they agree to float32 rounding (XLA may order a reduction differently per process).
    from vasa_jax import audio, checkpoints as checkpoints_lib
    from vasa_jax.data import motion as motion_data, synthetic

    manifest = motion_data.read_json(os.path.join(motion, motion_data.MANIFEST))
    encoder = audio.encoder_from_description(manifest["audio_encoder"])
    data = synthetic.from_stage1_config(checkpoints_lib.read_config(stage1))
    name = motion_data.list_clips(motion, "test")[0]
    identity, clip_index = (int(part) for part in name[len("id"):].split("_clip"))
    stored = motion_data.load_clip(motion, "test", name)["audio"]
    np.testing.assert_allclose(audio.frame_features(encoder, synthetic.get_clip(data, identity, clip_index).audio),
                               stored, rtol=0, atol=1e-5)
    _run("vasa_jax.train", "--config=configs/stage2.py:tiny", f"--workdir={stage2}", f"--config.data.root={motion}",
         "--config.train.num_steps=2", "--config.train.checkpoint_every=2", "--config.train.eval_every=2",
         "--config.data.eval_windows=8")
    audio_path = str(tmp_path / "speech.wav")
    soundfile.write(audio_path, _speech(1.5), SAMPLE_RATE)
    out = str(tmp_path / "workdirs.mp4")
    result = _run("vasa_jax.generate", f"--image={portrait}", f"--audio={audio_path}", f"--out={out}",
                  f"--stage1={stage1}", f"--stage2={stage2}", "--num_steps=2", check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert video.read_mp4(out)["frames"].shape[0] == num_video_frames(int(1.5 * SAMPLE_RATE))

    model = str(tmp_path / "model")
    _run("vasa_jax.export", f"--stage1={stage1}", f"--stage2={stage2}", f"--out={model}")
    import shutil

    shutil.rmtree(hf_dir)
    out = str(tmp_path / "model.mp4")
    result = _run("vasa_jax.generate", f"--image={portrait}", f"--audio={audio_path}", f"--out={out}",
                  f"--model={model}", "--num_steps=2", check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert video.read_mp4(out)["frames"].shape[0] == num_video_frames(int(1.5 * SAMPLE_RATE))


def test_write_mp4_is_atomic(tmp_path):
    out = tmp_path / "clip.mp4"
    frames = [np.zeros((16, 16, 3), np.uint8), np.zeros((8, 8, 3), np.uint8)]
    with pytest.raises(ValueError, match="the first was 16x16"):
        video.write_mp4(out, iter(frames))
    assert os.listdir(tmp_path) == []
    with pytest.raises(ValueError, match="even frame sizes"):
        video.write_mp4(out, np.zeros((2, 15, 16, 3), np.uint8))
    assert os.listdir(tmp_path) == []


@pytest.mark.slow
def test_quickstart_runs_every_stage_and_reports(tmp_path):
    """The README's main command with a few steps per stage: every output is there, the video decodes, the
    report holds the lip-sync scores. (Each stage's resume is tested where the stage is: the trainers' SIGKILL
    tests, the motion dataset's rerun in test_stage2_data, the judge's save and load in test_judge; a
    second quickstart run here cost several minutes of the suite for no new path.)"""
    import json

    command = ["vasa_jax.quickstart", f"--workdir={tmp_path}", "--stage1_steps=1", "--stage2_steps=2",
               "--num_steps=2", "--judge_steps=2", "--eval_clips=2", "--eval_num_steps=2"]
    result = _run(*command)
    for name in ("talking_head.mp4", "contact_sheet.png", "report.json", "judge/judge.npz"):
        assert os.path.isfile(tmp_path / name), result.stdout
    report = json.load(open(tmp_path / "report.json"))
    sync = report["lip_sync"]
    for key in ("lip_sync_r", "ceiling_r", "mismatched_r", "audio_nulled_r", "pose_only_true_r"):
        assert -1.0 <= sync[key] <= 1.0, key
    assert sync["num_clips"] == 2 and len(sync["per_clip"]) == 2 and report["video_frames"] > 0
    assert report["expression_transfer"]["num_frames"] == 200
    decoded = video.read_mp4(tmp_path / "talking_head.mp4")
    assert decoded["frames"].shape == (report["video_frames"], 64, 64, 3)
    assert "done. video" in result.stdout


MEDIA = os.environ.get("VASA_MEDIA_DIR")


@pytest.mark.skipif(not MEDIA, reason="VASA_MEDIA_DIR is not set (the shared real photos)")
def test_a_real_portrait_as_16_bit_grayscale_finds_its_face(tmp_path):
    """The face of a real photo saved as a 16-bit grayscale PNG is found where the colour photo's is."""
    from PIL import Image

    from vasa_jax.generate import portrait_crop

    photo = load_image(os.path.join(MEDIA, "images", "hallo_ref6.jpg"))
    gray = photo @ np.array([0.299, 0.587, 0.114], np.float32)
    Image.fromarray(np.round(gray * 65535).astype(np.uint16)).save(tmp_path / "gray16.png")
    wide = load_image(str(tmp_path / "gray16.png"))
    np.testing.assert_allclose(wide[..., 0], gray, atol=1e-4)
    found, expected = portrait_crop(wide, 64), portrait_crop(np.repeat(gray[..., None], 3, -1), 64)
    np.testing.assert_allclose(found.box, expected.box, atol=1.0)


@pytest.mark.skipif(not MEDIA, reason="VASA_MEDIA_DIR is not set (the shared real photos and speech)")
def test_every_real_portrait_and_speech_clip_goes_through(checkpoints, tmp_path):
    """Each real photo with one of the real speech clips (every clip used): any size, PNG or JPEG, 16 to 48 kHz,
    mono or stereo, 16 or 24 bit. Quality is not expected from synthetic training; running is."""
    from vasa_jax.audio import load_audio

    _, stage1, stage2 = checkpoints
    pipeline = TalkingHeadPipeline.from_workdirs(stage1, stage2)
    images = sorted(os.listdir(os.path.join(MEDIA, "images")))
    audios = sorted(os.listdir(os.path.join(MEDIA, "audio")))
    assert len(images) >= len(audios) > 0
    for i, name in enumerate(images):
        audio_path = os.path.join(MEDIA, "audio", audios[i % len(audios)])
        speech = load_audio(audio_path)
        result = pipeline.generate(os.path.join(MEDIA, "images", name), speech, num_steps=2, seed=i)
        assert result.frames.shape == (num_video_frames(len(speech)), 32, 32, 3), (name, audio_path)


def test_mp3_speech_goes_through(checkpoints, portrait, tmp_path):
    _, stage1, stage2 = checkpoints
    path = str(tmp_path / "speech.mp3")
    soundfile.write(path, np.stack([_speech(1.5, 44100)] * 2, axis=1), 44100, format="MP3")
    out = str(tmp_path / "out.mp4")
    _run("vasa_jax.generate", f"--image={portrait}", f"--audio={path}", f"--out={out}", f"--stage1={stage1}",
         f"--stage2={stage2}", "--num_steps=2")
    decoded = video.read_mp4(out)
    assert len(decoded["frames"]) == num_video_frames(int(1.5 * SAMPLE_RATE))
    assert decoded["audio_duration"] == pytest.approx(1.5, abs=0.03)


def _real_clip(folder):
    """`folder`/may.mp4: the first 2 s (50 frames) of a shared real talking-head video with its speech."""
    from vasa_jax import audio

    folder.mkdir()
    source = os.path.join(os.environ["VASA_MEDIA_DIR"], "video", "real3dportrait_May_5s.mp4")
    frames = np.stack(list(video.iter_video_frames(source)))[:50]
    video.write_mp4(folder / "may.mp4", frames, audio=audio.load_audio(source)[: 50 * 640])
    return frames


@pytest.mark.skipif(not os.environ.get("VASA_MEDIA_DIR"), reason="VASA_MEDIA_DIR is not set (the shared real videos)")
def test_the_benchmark_generates_from_each_real_videos_first_frame_and_speech(checkpoints, tmp_path):
    """`python -m vasa_jax.evaluate benchmark` (VASA-1's protocol) with the tiny workdirs on a 2 s real clip: its
    first frame becomes the portrait, its speech the audio, one video per seed with the speech's length and a
    sidecar naming the portrait and seed; the report has both rows (the real clip's delta-P measured) and the
    protocol; a video without speech is left out with the reason."""
    import json

    from vasa_jax import audio

    _, stage1, stage2 = checkpoints
    videos = tmp_path / "videos"
    frames = _real_clip(videos)
    video.write_mp4(videos / "silent.mp4", frames[:30])
    out = tmp_path / "bench"
    result = _run("vasa_jax.evaluate", "benchmark", f"--stage1={stage1}", f"--stage2={stage2}",
                  f"--videos={videos}", f"--out={out}", "--samples=2", "--num_steps=2", check=False)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    report = json.load(open(out / "report.json"))
    assert report["protocol"]["samples_per_audio"] == 2
    assert list(report["protocol"]["left_out"]) == [str(videos / "silent.mp4")]
    assert sorted(os.listdir(out / "generated")) == ["may_s0.mp4", "may_s0.mp4.json", "may_s1.mp4",
                                                       "may_s1.mp4.json"]
    for seed in (0, 1):
        path = str(out / "generated" / f"may_s{seed}.mp4")
        assert len(list(video.iter_video_frames(path))) == 50
        assert abs(len(audio.load_audio(path)) - 50 * 640) <= 640
        sidecar = json.load(open(path + ".json"))
        assert sidecar["seed"] == seed and sidecar["image"] == str(out / "portraits" / "may.png")
    assert set(report["generated"]["videos"]) == {str(out / "generated" / f"may_s{s}.mp4") for s in (0, 1)}
    real = report["real"]["videos"][str(videos / "may.mp4")]
    assert real["faces_found"] == 50 and real["pose_variation"] > 0
    assert "S_C" in result.stdout and "CAPP" in result.stdout


@pytest.mark.skipif(not os.environ.get("VASA_MEDIA_DIR"), reason="VASA_MEDIA_DIR is not set (the shared media)")
def test_the_evaluation_notebook_runs_top_to_bottom(checkpoints, tmp_path, monkeypatch):
    """notebooks/evaluate.ipynb executed as Colab would, on the tiny workdirs: two shared photos with 2 s of
    speech each (with and without a requested gaze), the plots, the metric table, and the benchmark on a real
    clip; its outputs include the table, and the videos it wrote decode."""
    nbclient = pytest.importorskip("nbclient")
    import nbformat

    _, stage1, stage2 = checkpoints
    bench = tmp_path / "bench_videos"
    _real_clip(bench)
    for key, value in {"VASA_STAGE1": stage1, "VASA_STAGE2": stage2, "VASA_SECONDS": "2", "VASA_NUM_STEPS": "2",
                       "VASA_SAMPLES": "1", "VASA_BENCH_VIDEOS": str(bench), "VASA_OUT": str(tmp_path / "out"),
                       "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}.items():
        monkeypatch.setenv(key, value)
    notebook = nbformat.read(os.path.join(ROOT, "notebooks", "evaluate.ipynb"), as_version=4)
    nbclient.NotebookClient(notebook, timeout=900, kernel_name="python3",
                            resources={"metadata": {"path": ROOT}}).execute()
    text = "\n".join(output.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                     for output in cell.get("outputs", []))
    assert "JAX backend: cpu" in text
    assert text.count("S_C") >= 2 and "CAPP" in text and "FVD_25" in text  # the table, twice (videos, benchmark)
    images = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.get("outputs", [])
              if "image/png" in output.get("data", {})]
    assert len(images) == 1  # the mouth / loudness / pose figure
    written = sorted(os.listdir(tmp_path / "out" / "generated"))
    assert written == ["pair0.mp4", "pair0.mp4.json", "pair0_gaze.mp4", "pair0_gaze.mp4.json", "pair1.mp4",
                       "pair1.mp4.json", "pair1_gaze.mp4", "pair1_gaze.mp4.json"]
    for name in ("pair0.mp4", "pair1_gaze.mp4"):
        assert len(list(video.iter_video_frames(tmp_path / "out" / "generated" / name))) == 50
    assert os.path.isfile(tmp_path / "out" / "benchmark" / "report.json")
