"""LivePortrait's renderer in Flax against the PyTorch modules of the published layout (issue 15).

The reference modules come from `mimic-head` (requirements-reference.txt, installed without dependencies: it needs
only torch), a package of LivePortrait's networks. The tests build them with random weights (BatchNorm statistics,
GRN and spectral norm included), save them as the published files, import those and compare every network and
the whole render.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("mimic_head")

from mimic_head.modules.appearance_feature_extractor import AppearanceFeatureExtractor as TorchF  # noqa: E402
from mimic_head.modules.convnextv2 import ConvNeXtV2 as TorchConvNeXtV2  # noqa: E402
from mimic_head.modules.spade_generator import SPADEDecoder as TorchG  # noqa: E402
from mimic_head.modules.stitching_retargeting_network import StitchingRetargetingNetwork as TorchMLP  # noqa: E402
from mimic_head.modules.warping_network import WarpingNetwork as TorchW  # noqa: E402
from mimic_head.utils.camera import get_rotation_matrix, headpose_pred_to_degree  # noqa: E402

from vasa_jax.models import liveportrait as lp  # noqa: E402
from vasa_jax.models.torch_import import import_mirrored_state_dict, load_torch_state_dict  # noqa: E402

# Narrow networks of the published structure (every block type, spectral norm, pixel shuffle, occlusion); SPADE's
# hidden width is fixed at 128 in the reference.
SMALL = lp.LivePortraitConfig(
    block_expansion=8, max_features=32, num_down_blocks=2, volume_channels=4, volume_depth=8, num_resblocks=2,
    num_keypoints=5, convnext_depths=(1, 1, 2, 1), convnext_dims=(16, 24, 32, 40),
    dense_block_expansion=8, dense_max_features=32, dense_num_blocks=3, dense_compress=4,
    decoder_upscale=2, decoder_out_channels=16, spade_hidden=128,
    stitching_hidden=(16, 16), lip_hidden=(16, 8), eye_hidden=(16, 16, 8),
)


class TorchMotionExtractor(torch.nn.Module):
    """mimic-head's MotionExtractor fixes ConvNeXt-V2-tiny's widths; the same wrapper (`detector`) around a narrow
    one."""

    def __init__(self, cfg):
        super().__init__()
        self.detector = TorchConvNeXtV2(depths=list(cfg.convnext_depths), dims=list(cfg.convnext_dims),
                                        num_kp=cfg.num_keypoints)

    def forward(self, x):
        return self.detector(x)


class TorchStitching(torch.nn.Module):
    def __init__(self, cfg):
        super().__init__()
        k3 = 3 * cfg.num_keypoints
        self.retarget_shoulder = TorchMLP(2 * k3, list(cfg.stitching_hidden), k3 + 2)
        self.retarget_mouth = TorchMLP(k3 + 2, list(cfg.lip_hidden), k3)
        self.retarget_eye = TorchMLP(k3 + 3, list(cfg.eye_hidden), k3)


def torch_networks(cfg):
    be, mf, nd = cfg.block_expansion, cfg.max_features, cfg.num_down_blocks
    return {
        "appearance_feature_extractor": TorchF(3, be, nd, mf, cfg.volume_channels, cfg.volume_depth,
                                               cfg.num_resblocks),
        "motion_extractor": TorchMotionExtractor(cfg),
        "warping_module": TorchW(
            num_kp=cfg.num_keypoints, block_expansion=be, max_features=mf, num_down_blocks=nd,
            reshape_channel=cfg.volume_channels, estimate_occlusion_map=True,
            dense_motion_params=dict(block_expansion=cfg.dense_block_expansion, max_features=cfg.dense_max_features,
                                     num_blocks=cfg.dense_num_blocks, reshape_depth=cfg.volume_depth,
                                     compress=cfg.dense_compress)),
        "spade_generator": TorchG(upscale=cfg.decoder_upscale, max_features=mf, block_expansion=be,
                                  out_channels=cfg.decoder_out_channels, num_down_blocks=nd),
        "stitching_retargeting_module": TorchStitching(cfg),
    }


def randomise(module, generator):
    """Every float parameter and BatchNorm statistic random (defaults of ones and zeros would hide a swapped
    scale and bias or an unread running variance); spectral norm's u and v stay the unit vectors torch made (from
    torch's global generator: seed it). Kernels have std 0.5 / sqrt(fan in): at torch's scale the random decoder
    ends in logits of about 80, which turn float32 rounding upstream into 1e-4 of the image."""
    with torch.no_grad():
        for name, tensor in list(module.named_parameters()) + list(module.named_buffers()):
            if not tensor.is_floating_point() or name.endswith(("weight_u", "weight_v")):
                continue
            if name.endswith("running_var"):
                tensor.copy_(0.5 + torch.rand(tensor.shape, generator=generator))
            elif name.endswith(("weight", "weight_orig")) and tensor.ndim > 1:
                fan_in = tensor[0].numel()
                tensor.copy_(0.5 * torch.randn(tensor.shape, generator=generator) / np.sqrt(fan_in))
            else:
                tensor.copy_(0.1 * torch.randn(tensor.shape, generator=generator) + (1.0 if name.endswith(
                    ("norm.weight", "norm1.weight", "norm2.weight")) else 0.0))
    return module.eval()


def save_published_files(networks, folder):
    """Each network's state dict under its published file name; the stitching file holds three state dicts."""
    for name, module in networks.items():
        if name == "stitching_retargeting_module":
            state = {key: getattr(module, key).state_dict() for key in
                     ("retarget_shoulder", "retarget_mouth", "retarget_eye")}
        else:
            state = module.state_dict()
        torch.save(state, os.path.join(folder, f"{name}.pth"))


def relative_error(ours, reference):
    ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
    return float(np.linalg.norm(ours - reference) / np.linalg.norm(reference))


def to_torch_image(image):
    return torch.from_numpy(np.asarray(image)).permute(0, 3, 1, 2).contiguous()


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    networks = {name: randomise(module, generator) for name, module in torch_networks(SMALL).items()}
    folder = tmp_path_factory.mktemp("liveportrait")
    save_published_files(networks, str(folder))
    variables = lp.load_liveportrait(str(folder), SMALL)
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, size=(2, 256, 256, 3)).astype(np.float32)
    return networks, variables, images, folder


def test_each_network_matches_pytorch(imported):
    networks, variables, images, _ = imported
    model = lp.LivePortrait(SMALL)
    with torch.no_grad():
        ref_volume = networks["appearance_feature_extractor"](to_torch_image(images)).numpy()
        ref_motion = networks["motion_extractor"](to_torch_image(images))
    volume = model.apply(variables, images, method=lambda m, x: m.appearance_feature_extractor(x))
    # torch [B, C, D, H, W] -> ours [B, D, H, W, C]
    assert relative_error(volume, ref_volume.transpose(0, 2, 3, 4, 1)) < 1e-4
    motion = model.apply(variables, images, method=lambda m, x: m.motion_extractor(x))
    for field in lp.MotionOutputs._fields:
        assert relative_error(getattr(motion, field), ref_motion[field].numpy()) < 1e-4, field

    rng = np.random.default_rng(1)
    kp_source = rng.uniform(-0.7, 0.7, size=(2, SMALL.num_keypoints, 3)).astype(np.float32)
    kp_driving = (kp_source + rng.normal(0, 0.1, size=kp_source.shape)).astype(np.float32)
    with torch.no_grad():
        ref = networks["warping_module"](torch.from_numpy(ref_volume), torch.from_numpy(kp_driving),
                                         torch.from_numpy(kp_source))
        ref_image = networks["spade_generator"](ref["out"]).numpy()
    warped = model.apply(variables, ref_volume.transpose(0, 2, 3, 4, 1), kp_driving, kp_source,
                         method=lambda m, v, d, s: m.warping_module(v, d, s))
    assert relative_error(warped.deformation, ref["deformation"].numpy()) < 1e-4
    assert relative_error(warped.occlusion, ref["occlusion_map"].numpy().transpose(0, 2, 3, 1)) < 1e-4
    assert relative_error(warped.features, ref["out"].numpy().transpose(0, 2, 3, 1)) < 1e-4
    image = model.apply(variables, ref["out"].numpy().transpose(0, 2, 3, 1),
                        method=lambda m, f: m.spade_generator(f))
    assert image.shape == (2, 512, 512, 3)
    assert relative_error(image, ref_image.transpose(0, 2, 3, 1)) < 1e-4

    stitching = networks["stitching_retargeting_module"]
    flat = lambda a: torch.from_numpy(a.reshape(2, -1))  # noqa: E731
    ratios = rng.uniform(0, 1, size=(2, 3)).astype(np.float32)
    with torch.no_grad():
        delta = stitching.retarget_shoulder(torch.cat([flat(kp_source), flat(kp_driving)], 1)).numpy()
        ref_lip = stitching.retarget_mouth(torch.cat([flat(kp_source), torch.from_numpy(ratios[:, :2])], 1))
        ref_eye = stitching.retarget_eye(torch.cat([flat(kp_source), torch.from_numpy(ratios)], 1))
    k = SMALL.num_keypoints
    ref_stitched = kp_driving + delta[:, : 3 * k].reshape(2, k, 3)
    ref_stitched[..., :2] += delta[:, None, 3 * k:]
    module = lambda m: m.stitching_retargeting_module  # noqa: E731
    stitched = model.apply(variables, kp_source, kp_driving, method=lambda m, s, d: module(m).stitch(s, d))
    assert relative_error(stitched, ref_stitched) < 1e-5
    lip = model.apply(variables, kp_source, ratios[:, :2], method=lambda m, s, r: module(m).retarget_lip(s, r))
    eye = model.apply(variables, kp_source, ratios, method=lambda m, s, r: module(m).retarget_eyes(s, r))
    assert relative_error(lip, ref_lip.numpy().reshape(2, k, 3)) < 1e-5
    assert relative_error(eye, ref_eye.numpy().reshape(2, k, 3)) < 1e-5


def torch_keypoints(motion, canonical):
    """LivePortrait's keypoint transform of `canonical` keypoints (the source's, in a re-enactment) by a frame's
    motion, written with the reference package's own angle and rotation functions."""
    bs = motion["kp"].shape[0]
    pitch, yaw, roll = (headpose_pred_to_degree(motion[name]) for name in ("pitch", "yaw", "roll"))
    rotation = get_rotation_matrix(pitch, yaw, roll)
    kp = canonical.view(bs, -1, 3) @ rotation + motion["exp"].view(bs, -1, 3)
    kp = kp * motion["scale"][..., None]
    kp[:, :, 0:2] += motion["t"][:, None, 0:2]
    return kp


def test_whole_render_matches_pytorch(imported):
    """Source and driving photos -> M, F, the keypoint transform (the source's canonical keypoints with the
    driving frame's pose and expression), stitching, W and G: the image LivePortrait's pipeline renders, within
    1e-4."""
    networks, variables, images, _ = imported
    source, driving = images[:1], images[1:]
    with torch.no_grad():
        motion_s = networks["motion_extractor"](to_torch_image(source))
        motion_d = networks["motion_extractor"](to_torch_image(driving))
        kp_s, kp_d = torch_keypoints(motion_s, motion_s["kp"]), torch_keypoints(motion_d, motion_s["kp"])
        delta = networks["stitching_retargeting_module"].retarget_shoulder(
            torch.cat([kp_s.view(1, -1), kp_d.view(1, -1)], 1))
        k = SMALL.num_keypoints
        kp_d = kp_d + delta[:, : 3 * k].view(1, k, 3)
        kp_d[..., :2] += delta[:, None, 3 * k:]
        volume = networks["appearance_feature_extractor"](to_torch_image(source))
        warped = networks["warping_module"](volume, kp_driving=kp_d, kp_source=kp_s)
        reference = networks["spade_generator"](warped["out"]).numpy().transpose(0, 2, 3, 1)
    model = lp.LivePortrait(SMALL)
    render = jax.jit(lambda v, s, d: model.apply(v, s, d))
    ours = render(variables, jnp.asarray(source), jnp.asarray(driving))
    assert relative_error(ours, reference) < 1e-4
    # The angle and rotation conventions alone (they would hide inside the render's tolerance otherwise).
    ours_kp = model.apply(variables, driving, method=lambda m, x: lp.transform_keypoints(*lp.pose_from_motion(
        m.motion_extractor(x))))
    assert relative_error(ours_kp, torch_keypoints(motion_d, motion_d["kp"]).numpy()) < 1e-5


def test_import_names_every_missing_unexpected_and_misshaped_tensor(imported, tmp_path):
    _, _, _, folder = imported
    state = load_torch_state_dict(os.path.join(folder, "spade_generator.pth"))
    state.pop("fc.bias")
    state["fc.weight_extra"] = np.zeros(3, np.float32)
    state["G_middle_0.conv_0.bias"] = np.zeros(7, np.float32)
    image = jax.ShapeDtypeStruct((1, 256, 256, 3), jnp.float32)
    expected = jax.eval_shape(lp.LivePortrait(SMALL).init, jax.random.PRNGKey(0), image, image)
    with pytest.raises(ValueError) as error:
        import_mirrored_state_dict(state, {"params": expected["params"]["spade_generator"]}, "spade_generator")
    message = str(error.value)
    assert message.startswith("cannot import spade_generator:")
    assert "missing (1): params/fc/bias" in message
    assert "unexpected tensors (1): fc.weight_extra" in message
    assert "G_middle_0.conv_0.bias: (7,)" in message

    for name in lp.CHECKPOINT_FILES.values():
        if name != "warping_module":
            os.symlink(os.path.join(folder, f"{name}.pth"), tmp_path / f"{name}.pth")
    with pytest.raises(FileNotFoundError, match=r"no warping_module\.pth \(or \.safetensors\)"):
        lp.load_liveportrait(str(tmp_path), SMALL)


def test_the_default_config_is_the_published_layout(tmp_path, bucket):
    """The published networks' exact shapes (LivePortrait's models.yaml, built by the reference package) import
    into the default config with nothing missing or left over; the folder exports as a model's stage 1, here
    beside a stage 2 trained on a motion dataset at a gs:// URL and into a gs:// model folder (conftest's
    `bucket`)."""
    generator = torch.Generator().manual_seed(0)
    published = lp.LivePortraitConfig()
    networks = torch_networks(published)
    from mimic_head.modules.motion_extractor import MotionExtractor
    networks["motion_extractor"] = MotionExtractor(num_kp=21, backbone="convnextv2_tiny")
    randomise(networks["stitching_retargeting_module"], generator)
    save_published_files(networks, str(tmp_path))
    variables = lp.load_liveportrait(str(tmp_path), published)
    counts = {name: sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(variables["params"][name]))
              for name in lp.CHECKPOINT_FILES}
    for name, module in networks.items():
        assert counts[name] == sum(p.numel() for p in module.parameters()), name

    # The folder is a stage 1 wherever one is read (generation, encode_motion): the published sizes, these weights.
    from vasa_jax import checkpoints

    stage1 = checkpoints.load_stage1(str(tmp_path))
    assert stage1.model.cfg == published and stage1.config is None and stage1.framing == "liveportrait"
    assert stage1.model.cfg.output_size == 512 and stage1.model.cfg.dynamics_dim == 63
    jax.tree.map(np.testing.assert_array_equal, stage1.variables, variables)

    # The folder exports as a model's stage 1 beside a stage 2 of its motion size (70-d; trained one step on random
    # motion of that size: only the sizes matter here), and the model folder reads back as the same renderer.
    from configs import stage2 as stage2_config
    from vasa_jax import export
    from vasa_jax.audio import LogMelEncoder
    from vasa_jax.data import synthetic
    from vasa_jax.data.encode_motion import build, manifest_for
    from vasa_jax.train import loop

    rng = np.random.default_rng(0)
    motion_dim = 7 + stage1.model.cfg.dynamics_dim
    random_motion = lambda render, truth: rng.normal(size=(len(truth["pose"]), motion_dim)).astype(np.float32)
    encoder, motion_root = LogMelEncoder(num_mels=8), "gs://data/motion"
    build(motion_root, random_motion, encoder,
          synthetic.SyntheticConfig(num_identities=4, num_test_identities=1, clips_per_identity=1,
                                    frames_per_clip=40, resolution=32),
          manifest_for("stage1", str(tmp_path), encoder, "synthetic"), log=lambda _: None)
    assert (bucket / "data" / "motion" / "manifest.json").is_file()
    config = stage2_config.get_config("tiny")
    config.model.update(window=16, context=4, width=32, num_layers=2, num_heads=4)
    config.data.update(root=motion_root, batch_size=8, num_threads=1, eval_windows=8, stride=4)
    config.train.update(num_steps=1, eval_every=1, checkpoint_every=1, log_every=1)
    loop.train(config, str(tmp_path / "stage2"))
    info = export.export(str(tmp_path), str(tmp_path / "stage2"), "gs://models/liveportrait", log=lambda _: None)
    assert info["trained"]["stage1_step"] is None and info["stage1_framing"] == "liveportrait"
    assert info["trained"]["motion_dataset"] == motion_root
    assert "published weights" in (bucket / "models" / "liveportrait" / "README.md").read_text()
    exported = checkpoints.load_model("gs://models/liveportrait").stage1
    assert exported.model.cfg == published and exported.framing == "liveportrait"
    jax.tree.map(np.testing.assert_array_equal, exported.variables, variables)
    with pytest.raises(export.ExportError, match="already exists"):
        export.export(str(tmp_path), str(tmp_path / "stage2"), "gs://models/liveportrait", log=lambda _: None)
