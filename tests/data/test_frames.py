import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers.media import make_frames
from PIL import Image

from videopanda.constants import PAD_COLOR, PIXEL_MEAN, PIXEL_STD
from videopanda.data.frames import FrameConfig, Placement, frame_placement, preprocess_video, resize_frames

CONFIG = FrameConfig()


def normalised(rgb) -> torch.Tensor:
    return (torch.tensor(rgb, dtype=torch.float32) / 255 - torch.tensor(PIXEL_MEAN)) / torch.tensor(PIXEL_STD)


@pytest.mark.parametrize(
    "height, width, teacher",
    [
        # (teacher height, width, top, left): worked out by hand from the original's geometry (docs/DESIGN.md).
        (48, 64, (168, 224, 28, 0)),  # 224*48/64/14 = 12 patches; (16-12)//2 = 2 -> 28
        (64, 48, (224, 168, 0, 28)),
        (96, 64, (224, 154, 0, 28)),  # 10.67 -> 11 patches; (16-11)//2 = 2
        (1080, 1920, (126, 224, 42, 0)),  # 9 patches; (16-9)//2 = 3
        (240, 320, (168, 224, 28, 0)),
        (100, 100, (224, 224, 0, 0)),
        (10, 1000, (14, 224, 98, 0)),  # 0.16 -> 1 patch; (16-1)//2 = 7
        (50, 260, (56, 224, 84, 0)),  # 3.08 -> 4 patches; (16-4)//2 = 6
    ],
)
def test_placement_teacher_grid_and_student_twice(height, width, teacher):
    student_place, teacher_place = frame_placement(height, width, CONFIG)
    assert teacher_place == Placement(*teacher, canvas=224)
    assert student_place == Placement(*(2 * v for v in teacher), canvas=448)


def check_layout(tensor: torch.Tensor, place: Placement, n_real: int):
    size = place.canvas
    assert tuple(tensor.shape) == (2, 4, 4, size, size)
    frames = tensor.reshape(8, 4, size, size)
    expected_mask = torch.zeros(size, size)
    expected_mask[place.top : place.top + place.height, place.left : place.left + place.width] = 1
    real = frames[:n_real]
    assert torch.equal(real[:, 3], expected_mask.expand(n_real, size, size))
    outside = expected_mask == 0
    pad = normalised(PAD_COLOR).view(1, 3, 1)
    on_canvas = real[:, :3].flatten(2)[:, :, outside.flatten()]
    assert torch.allclose(on_canvas, pad.expand_as(on_canvas), atol=1e-6)
    assert torch.count_nonzero(frames[n_real:]) == 0


@pytest.mark.parametrize("height, width, n", [(48, 64, 8), (64, 48, 3), (30, 30, 1)])
def test_student_and_teacher_layout(height, width, n):
    frames = torch.from_numpy(make_frames(n, height, width))
    student, teacher = preprocess_video(frames, CONFIG)
    student_place, teacher_place = frame_placement(height, width, CONFIG)
    check_layout(student, student_place, n)
    check_layout(teacher, teacher_place, n)
    assert student.dtype == teacher.dtype == torch.float32


def test_constant_colour_is_normalised_exactly():
    frames = np.zeros((2, 40, 60, 3), dtype=np.uint8)
    frames[...] = (200, 100, 50)
    student, teacher = preprocess_video(frames, CONFIG)
    for tensor, place in zip((student, teacher), frame_placement(40, 60, CONFIG)):
        content = tensor[0, 0, :3, place.top : place.top + place.height, place.left : place.left + place.width]
        assert torch.allclose(content, normalised((200, 100, 50)).view(3, 1, 1).expand_as(content), atol=1e-6)


def test_student_content_pools_down_to_the_teacher():
    # Rendered separately from the same source, the 448 frame average-pooled 2x2 is close to the 224 one.
    frames = torch.from_numpy(make_frames(1, 96, 128, seed=3))
    student, teacher = preprocess_video(frames, CONFIG)
    pooled = F.avg_pool2d(student[0, 0], 2)
    assert torch.equal(pooled[3], teacher[0, 0, 3])
    inside = teacher[0, 0, 3] > 0
    assert (pooled[:3] - teacher[0, 0, :3])[:, inside].abs().mean() < 0.05


def test_flip_is_identical_for_student_and_teacher_and_only_on_request():
    frames = make_frames(4, 48, 64, seed=7)
    student, teacher = preprocess_video(frames, CONFIG, flip=True)
    mirrored_student, mirrored_teacher = preprocess_video(np.ascontiguousarray(frames[:, :, ::-1]), CONFIG)
    assert torch.equal(student, mirrored_student) and torch.equal(teacher, mirrored_teacher)
    plain_student, plain_teacher = preprocess_video(frames, CONFIG)
    assert not torch.equal(student, plain_student) and not torch.equal(teacher, plain_teacher)
    assert torch.equal(student[..., 3, :, :], plain_student[..., 3, :, :])  # the padding geometry does not move


def test_other_frame_counts_and_sizes():
    config = FrameConfig(num_frames=16, image_size=56, teacher_image_size=28)
    student, teacher = preprocess_video(make_frames(5, 48, 64), config)
    assert tuple(student.shape) == (4, 4, 4, 56, 56) and tuple(teacher.shape) == (4, 4, 4, 28, 28)
    assert torch.count_nonzero(student.reshape(16, -1)[5:]) == 0
    assert all(torch.count_nonzero(f) > 0 for f in student.reshape(16, -1)[:5])


@pytest.mark.parametrize("kwargs", [{"num_frames": 6}, {"num_frames": 0}, {"image_size": 300}, {"teacher_image_size": 100}])
def test_invalid_configs_are_refused(kwargs):
    with pytest.raises(ValueError):
        FrameConfig(**kwargs)


def test_invalid_inputs_are_refused():
    with pytest.raises(ValueError, match="expected 1 to 8 frames"):
        preprocess_video(make_frames(9), CONFIG)
    with pytest.raises(ValueError, match="uint8"):
        preprocess_video(torch.zeros(2, 48, 64, 3), CONFIG)


def noise(n: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """Uniform-noise uint8 frames (n, height, width, 3): the hardest case for a resampler to match."""
    return np.random.default_rng(seed).integers(0, 256, size=(n, height, width, 3), dtype=np.uint8)


def pil_resize(frame: np.ndarray, place: Placement) -> np.ndarray:
    """The original's resize: a PIL RGB image through Image.resize((w, h)) with Pillow's default filter."""
    return np.asarray(Image.fromarray(frame).convert("RGB").resize((place.width, place.height)))


ODD_SIZES = [(97, 333), (333, 97), (500, 14), (14, 500), (48, 64)]


@pytest.mark.parametrize("height, width", ODD_SIZES)
def test_resized_frames_are_pillows_pixels(height, width):
    frames = noise(3, height, width, seed=height + width)
    places = frame_placement(height, width, CONFIG)
    resized = resize_frames(frames, [(p.height, p.width) for p in places])
    for out, place in zip(resized, places):
        assert out.dtype == np.uint8 and out.shape == (3, place.height, place.width, 3)
        for frame, got in zip(frames, out):
            assert np.array_equal(got, pil_resize(frame, place))


@pytest.mark.parametrize("height, width", ODD_SIZES)
def test_preprocessed_picture_is_pillows_pixels(height, width):
    # Undo the normalisation of the pasted area: the uint8 values must be Pillow's exactly.
    frames = noise(2, height, width, seed=7)
    std, mean = torch.tensor(PIXEL_STD).view(3, 1, 1), torch.tensor(PIXEL_MEAN).view(3, 1, 1)
    outputs = preprocess_video(torch.from_numpy(frames), CONFIG)
    for tensor, place in zip(outputs, frame_placement(height, width, CONFIG)):
        flat = tensor.reshape(CONFIG.num_frames, 4, place.canvas, place.canvas)
        for i, frame in enumerate(frames):
            picture = flat[i, :3, place.top : place.top + place.height, place.left : place.left + place.width]
            grey = ((picture * std + mean) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
            assert np.array_equal(grey, pil_resize(frame, place))


def reference(frames: np.ndarray, place: Placement, num_frames: int) -> np.ndarray:
    """Built by hand as the original does: PIL resize, paste on a mean-colour canvas, /255, normalise,
    append the mask; then all-zero frames up to num_frames. -> float64 (num_frames, 4, S, S)."""
    out = np.zeros((num_frames, 4, place.canvas, place.canvas))
    for i, frame in enumerate(frames):
        canvas = Image.new("RGB", (place.canvas, place.canvas), PAD_COLOR)
        canvas.paste(Image.fromarray(pil_resize(frame, place)), (place.left, place.top))
        rgb = np.asarray(canvas, dtype=np.float64) / 255.0
        out[i, :3] = ((rgb - np.array(PIXEL_MEAN)) / np.array(PIXEL_STD)).transpose(2, 0, 1)
        out[i, 3, place.top : place.top + place.height, place.left : place.left + place.width] = 1.0
    return out


@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("height, width", [(97, 333), (360, 640), (333, 97)])
def test_preprocess_video_equals_a_hand_built_reference(height, width, flip):
    frames = noise(3, height, width, seed=11)
    source = frames[:, :, ::-1] if flip else frames  # the flip mirrors the decoded frames
    outputs = preprocess_video(frames, CONFIG, flip=flip)
    for tensor, place in zip(outputs, frame_placement(height, width, CONFIG)):
        expected = reference(np.ascontiguousarray(source), place, CONFIG.num_frames)
        got = tensor.reshape(CONFIG.num_frames, 4, place.canvas, place.canvas).double().numpy()
        assert np.abs(got - expected).max() < 1e-5
