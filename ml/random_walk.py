"""IRNet's random walk of class scores over the stride-4 grid, without an N x N matrix.

The walk's transition matrix T (N x N, N = h * w) joins each pixel to those within a radius:
A_ij = a_ij ** beta for the path affinities a_ij, A_ii = 1, A symmetric, T = A column-normalised;
the result is x @ T ** (2 ** exp_times) for the class scores x (C, N). The dense formulation
squares T exp_times times: O(N^3) time and O(N^2) memory (0.5 GiB at N ~ 11,750). The same
result is reached by applying the sparse T to the scores 2 ** exp_times times, which costs
O(N * pairs * C) per step and memory linear in N, whatever the image size.
`dense_random_walk` is that dense formulation, kept as the reference for tests and the benchmark.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from ml.models.irn import displacements, path_affinities


def affinity_pairs(boundary: torch.Tensor, beta: float, radius: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(h, w) boundary -> (rows, cols, weights): every A_ij inside the map, both directions and self-loops.

    An edge list, built independently of `transition_matrix`, for the dense reference.
    """
    height, width = boundary.shape
    affinities = path_affinities(boundary[None], radius)[0]  # (D, h, w)
    index = torch.arange(height * width, device=boundary.device).view(height, width)
    ys, xs = torch.meshgrid(
        torch.arange(height, device=boundary.device), torch.arange(width, device=boundary.device), indexing="ij"
    )
    rows, cols, weights = [index.flatten()], [index.flatten()], [torch.ones_like(boundary).flatten()]
    for d, (dy, dx) in enumerate(displacements(radius)):
        inside = (ys + dy < height) & (xs + dx >= 0) & (xs + dx < width)
        source = index[inside]
        target = index[inside] + dy * width + dx
        weight = affinities[d][inside] ** beta
        rows += [source, target]
        cols += [target, source]
        weights += [weight, weight]
    return torch.cat(rows), torch.cat(cols), torch.cat(weights)


def transition_matrix(boundary: torch.Tensor, beta: float, radius: int) -> torch.Tensor:
    """Sparse CSR (N, N) P = D^-1 A: one step of the walk maps scores X (N, C) to P @ X.

    P is T transposed (A is symmetric, so its column sums are its row sums D). Each row is built
    in place from the pixel's partners (itself, i + d and i - d for every displacement d), taken
    in order of their flat offset, which is column order: no sort and no edge list.
    """
    height, width = boundary.shape
    weights = path_affinities(boundary[None], radius)[0] ** beta  # (D, h, w): pair (p, p + d); 0 off the map
    ys = torch.arange(height, device=boundary.device).view(-1, 1)
    xs = torch.arange(width, device=boundary.device).view(1, -1)
    partners = [(0, torch.ones_like(boundary, dtype=torch.bool), torch.ones_like(boundary))]
    for d, (dy, dx) in enumerate(displacements(radius)):
        partners.append((dy * width + dx, (ys + dy < height) & (xs + dx >= 0) & (xs + dx < width), weights[d]))
        # the pair (p - d, p) seen from p: its weight sits at p - d
        shifted = F.pad(weights[d], (max(dx, 0), max(-dx, 0), dy, 0))[:height, max(-dx, 0) : max(-dx, 0) + width]
        partners.append((-(dy * width + dx), (ys >= dy) & (xs - dx >= 0) & (xs - dx < width), shifted))
    partners.sort(key=lambda partner: partner[0])
    offsets = torch.tensor([p[0] for p in partners], device=boundary.device)
    inside = torch.stack([p[1].expand(height, width) for p in partners], dim=-1).view(-1, len(partners))  # (N, K)
    values = torch.stack([p[2] for p in partners], dim=-1).view(-1, len(partners))  # (N, K)
    del partners, weights
    values /= values.sum(dim=1, keepdim=True)  # entries off the map are 0 and add nothing
    # int32 indices (half the memory of int64) hold any grid of under 2**31 entries
    index_type = torch.int32 if inside.numel() < 2**31 else torch.int64
    row_starts = torch.zeros(height * width + 1, dtype=index_type, device=boundary.device)
    row_starts[1:] = torch.cumsum(inside.sum(dim=1), 0)
    columns = torch.arange(height * width, dtype=index_type, device=boundary.device).view(-1, 1)
    columns = (columns + offsets.to(index_type))[inside]  # (nnz,) row by row, each row in column order
    values = values[inside]
    with warnings.catch_warnings():
        # CSR matrix-times-dense is stable and exactly what is needed; torch only flags the layout as beta.
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(row_starts, columns, values, (height * width,) * 2, check_invariants=False)


def random_walk(scores: torch.Tensor, boundary: torch.Tensor, beta: float, exp_times: int, radius: int) -> torch.Tensor:
    """(C, h, w) class scores, (h, w) boundary probabilities -> (C, h, w) scores after 2**exp_times steps.

    Scores start damped on boundaries (x * (1 - B)), as IRNet's walk does. The steps run in
    float64: 256 float32 steps drift by ~1e-3 relative on the smallest scores, float64 stays at
    ~1e-12 of the dense result, for under twice the time.
    """
    channels, height, width = scores.shape
    boundary = boundary.to(torch.float64)
    step = transition_matrix(boundary, beta, radius)
    walked = (scores.to(torch.float64) * (1 - boundary)).reshape(channels, -1).T.contiguous()  # (N, C)
    for _ in range(2**exp_times):
        walked = step @ walked
    return walked.T.reshape(channels, height, width).to(scores.dtype)


def dense_random_walk(
    scores: torch.Tensor, boundary: torch.Tensor, beta: float, exp_times: int, radius: int
) -> torch.Tensor:
    """The reference: dense T squared exp_times times, then x @ T**(2**exp_times). O(N^2) memory."""
    channels, height, width = scores.shape
    size = height * width
    rows, cols, weights = affinity_pairs(boundary.to(scores.dtype), beta, radius)
    affinity = torch.zeros(size, size, dtype=scores.dtype, device=scores.device)
    affinity[rows, cols] = weights
    transition = affinity / affinity.sum(dim=0, keepdim=True)
    del affinity
    for _ in range(exp_times):
        transition = transition @ transition
    walked = (scores * (1 - boundary)).reshape(channels, size) @ transition  # (C, N)
    return walked.reshape(channels, height, width)
