import numpy as np
import pytest
import torch

from ml.models.irn import displacements, path_affinities, path_offsets
from ml.random_walk import dense_random_walk, random_walk, transition_matrix


def _maps(height: int, width: int, channels: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    boundary = torch.rand(height, width, generator=gen) ** 3  # mostly low, some strong edges
    scores = torch.rand(channels, height, width, generator=gen)
    return scores, boundary


def test_displacements_cover_the_disc_once_per_pair():
    for radius in (2, 5, 10):
        half = set(displacements(radius))
        mirrored = {(-dy, -dx) for dy, dx in half}
        disc = {(dy, dx) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1)}
        disc = {d for d in disc if 0 < d[0] ** 2 + d[1] ** 2 < radius**2}
        assert not half & mirrored and half | mirrored == disc


def test_paths_run_from_source_to_target_within_a_pixel_of_the_line():
    assert path_offsets(0, 3) == ((0, 0), (0, 1), (0, 2), (0, 3))
    for dy, dx in displacements(5):
        path = path_offsets(dy, dx)
        assert (0, 0) in path and (dy, dx) in path
        for y, x in path:
            assert (dy * x - dx * y) ** 2 / (dy * dy + dx * dx) < 1


def test_affinity_is_one_minus_the_strongest_boundary_on_the_path():
    boundary = torch.zeros(1, 5, 9)
    boundary[0, 2, 4] = 0.8
    aff = path_affinities(boundary, radius=5)[0]  # (D, 5, 9)
    d = {disp: i for i, disp in enumerate(displacements(5))}
    assert aff[d[(0, 4)], 2, 1] == pytest.approx(0.2)  # (2,1) -> (2,5) crosses (2,4)
    assert aff[d[(0, 4)], 1, 1] == pytest.approx(1.0)  # the row above does not
    assert aff[d[(1, 0)], 1, 4] == pytest.approx(0.2)  # the boundary pixel is an end of the pair
    assert aff[d[(0, 4)], 2, 6] == 0.0  # (2,6) -> (2,10) leaves the map


def test_transition_rows_are_stochastic_and_memory_is_linear_in_pixels():
    for height, width in [(10, 12), (40, 48)]:
        _, boundary = _maps(height, width, 1, 0)
        step = transition_matrix(boundary.double(), beta=10, radius=5)
        dense = step.to_dense()
        torch.testing.assert_close(dense.sum(dim=1), torch.ones(height * width, dtype=torch.float64))
        # P = D^-1 A with A_ii = 1, so P's diagonal is 1 / D and A comes back as P / diag(P)
        affinity = dense / dense.diagonal()[:, None]
        torch.testing.assert_close(affinity, affinity.T)
        # at most the self-loop and both directions of every pair per pixel, whatever the size
        assert step.values().numel() <= height * width * (2 * len(displacements(5)) + 1)


@pytest.mark.parametrize(("height", "width", "seed"), [(9, 11, 0), (13, 7, 1), (16, 16, 2)])
def test_sparse_walk_equals_the_dense_reference(height, width, seed):
    scores, boundary = _maps(height, width, 3, seed)
    sparse = random_walk(scores, boundary, beta=10, exp_times=8, radius=5)
    dense = dense_random_walk(scores.double(), boundary.double(), beta=10, exp_times=8, radius=5)
    assert torch.equal(sparse.argmax(dim=0), dense.argmax(dim=0))
    relative = ((sparse.double() - dense).abs() / dense.abs()).max()
    assert relative < 1e-4


def test_walk_keeps_a_constant_map_and_runs_on_large_grids():
    # 200 x 160 at stride 4 is an 800 x 640 image: past the 512 px the dense code handles.
    _, boundary = _maps(200, 160, 1, 3)
    walked = random_walk(torch.full((2, 200, 160), 0.5), torch.zeros_like(boundary), beta=10, exp_times=4, radius=5)
    torch.testing.assert_close(walked, torch.full((2, 200, 160), 0.5))
    spread = random_walk(torch.rand(1, 200, 160), boundary, beta=10, exp_times=4, radius=5)
    assert spread.shape == (1, 200, 160) and torch.isfinite(spread).all()


def test_walk_does_not_cross_a_closed_boundary():
    # A wall of certain boundary splits the map; the class seeded on the left stays on the left.
    boundary = torch.zeros(12, 20)
    boundary[:, 10] = 1.0
    scores = torch.zeros(2, 12, 20)
    scores[0, 5, 2] = 1.0
    scores[1, 5, 17] = 1.0
    walked = random_walk(scores, boundary, beta=10, exp_times=8, radius=5)
    labels = walked.argmax(dim=0).numpy()
    assert (labels[:, :10] == 0).all() and (labels[:, 11:] == 1).all()
    assert np.all(walked[0, :, 11:].numpy() < 1e-12)


def test_walk_labels_scale_by_the_global_max_and_keep_a_constant_background():
    from ml.stages.refine import walk_labels

    walked = torch.tensor([[[4.0, 0.0, 0.0]], [[0.0, 0.0, 0.8]]])  # (2 keys, 1, 3) at stride 4
    # x4 bilinear: pixel 8 samples column 1.625, i.e. 5/8 of the last column; the max 4 scales to 1
    labels = walk_labels(walked, np.array([3, 7]), (3, 9), bg_threshold=0.25)
    assert labels.shape == (3, 9) and labels.dtype == np.uint8
    assert (labels[:, 0] == 3).all() and (labels[:, 8] == 0).all()  # 0.8 / 4 * 5/8 = 0.125 < 0.25
    walked[1, 0, 2] = 2.0
    labels = walk_labels(walked, np.array([3, 7]), (3, 9), bg_threshold=0.25)
    assert (labels[:, 8] == 7).all()  # 2 / 4 * 5/8 = 0.3125 > 0.25


def test_refine_handles_images_larger_than_512_px():
    from ml.models.irn import EdgeNet
    from ml.spec.config import RefineConfig
    from ml.stages.refine import refine_image

    image = np.full((520, 600, 3), 90, np.uint8)
    image[100:400, 150:450] = 200
    cam_s4 = np.zeros((1, 130, 150), np.float32)
    cam_s4[0, 40:90, 50:100] = 1.0
    mask = refine_image(EdgeNet("resnet18").eval(), image, cam_s4, np.array([5]), RefineConfig())
    assert mask.shape == (520, 600) and set(np.unique(mask)) == {0, 5}
    assert mask[250, 300] == 5 and mask[10, 10] == 0
