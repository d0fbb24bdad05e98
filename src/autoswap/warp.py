"""Sparse image warping (thin-plate / polyharmonic spline) in plain TensorFlow.

This is a port of `tfa.image.sparse_image_warp` and the two functions it is built on,
`tfa.image.interpolate_spline` and `tfa.image.dense_image_warp`, from tensorflow-addons 0.23
(Apache 2.0). tensorflow-addons is end-of-life and no longer imports on TF 2.21, but the
"random warp" training augmentation needs its exact behaviour, so the math is kept as it was:

- points are (y, x) in pixels;
- `dense_image_warp` pulls pixels: output[b, j, i] = image[b, j - flow[b, j, i, 0], i - flow[b, j, i, 1]],
  bilinear, a location outside the image taking the nearest edge pixel;
- the spline is solved in float32 with `tf.linalg.solve` on the (N+3) x (N+3) system, as in tfa;
- `num_boundary_points` adds zero-flow control points on the image edges, in tfa's order.

Only the way the work is done changed, because this runs on every training step: the query
grid (every pixel) is the same for all images, so its squared distances to the control points
are built from a row part plus a column part instead of tiling an (B, H*W, 2) grid, and the
four bilinear corners come from one gather. Everything is TF ops on the whole batch (each
image with its own control points): it runs eagerly, in `tf.function` (also with
`jit_compile=True`) and in `tf.data` maps; the batch size and N may be dynamic.

Precision: the thin-plate system is badly conditioned in float32 (cond ~ 6e10 for 25 points
on a 128 px image), so the dense flow carries ~1e-3 to 5e-3 px of rounding noise. tfa has the
same noise (its output is ~4e-3 px from a float64 solution), and XLA, which rounds differently,
differs from eager by about as much. Irrelevant for augmentation, but do not expect agreement
with tfa, or between eager and XLA, to better than ~1e-2 px (order 2).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

EPSILON = 1e-10  # as tfa: keeps log() and sqrt() away from 0 in the radial basis function


def _dim(x: tf.Tensor, i: int):
    """Static size of axis `i` when known (keeps shapes static for XLA), else the dynamic one."""
    return x.shape[i] if x.shape[i] is not None else tf.shape(x)[i]


# --------------------------------------------------------------------------------------------
# polyharmonic spline


def _phi(r: tf.Tensor, order: int) -> tuple[float, tf.Tensor]:
    """Radial basis function of the spline on *squared* distances r = d^2, as tfa's, returned as
    (factor, g) with phi = factor * g.

    The factor is kept apart so that `_evaluate` can put it on the small (B, N, k) weights
    instead of making a pass over the large (B, H*W, N) matrix; it is 0.5 or 1, powers of two,
    so both ways give the same bits."""
    if order == 1:
        return 1.0, tf.sqrt(tf.maximum(r, EPSILON))  # d
    if order == 2:
        # thin-plate spline, d^2 log d = 0.5 r log r. xlogy is 0 at r = 0, as tfa's clamp at
        # EPSILON gives, and is one pass over the matrix instead of tfa's four.
        return 0.5, tf.math.xlogy(r, r)
    if order == 4:
        return 0.5, tf.square(r) * tf.math.log(tf.maximum(r, EPSILON))
    r = tf.maximum(r, EPSILON)
    if order % 2 == 0:
        return 0.5, tf.pow(r, 0.5 * order) * tf.math.log(r)
    return 1.0, tf.pow(r, 0.5 * order)


def _squared_distances(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
    """(B, M, d), (B, N, d) -> (B, M, N) with out[b, m, n] = ||x[b, m] - y[b, n]||^2.

    Differences rather than tfa's |x|^2 - 2 x.y + |y|^2, which loses ~3 digits to cancellation
    at pixel coordinates (|x|^2 is ~3e4 on a 128 px image)."""
    diff = x[:, :, None, :] - y[:, None, :, :]  # (B, M, N, d)
    return tf.reduce_sum(tf.square(diff), axis=-1)


def _solve_interpolation(train_points, train_values, order, regularization_weight):
    """Fit the spline: (B, N, d) centres c, (B, N, k) values f -> w (B, N, k), v (B, d+1, k).

    Notation of https://en.wikipedia.org/wiki/Polyharmonic_spline: solve
        [A   B] [w]   [f]       A = phi(|c_i - c_j|^2) + reg * I   (N, N)
        [B^T 0] [v] = [0]       B = [c, 1]                         (N, d+1)
    The zero rows ask w to be orthogonal to the linear part, which makes the system square."""
    c, f = train_points, train_values
    b, n, d, k = _dim(c, 0), _dim(c, 1), c.shape[-1], f.shape[-1]
    if d is None or k is None:
        raise ValueError("the last dimension of train_points and train_values must be static")

    # adding 0 * I changes nothing, so a tensor regularization_weight needs no python branch
    factor, g = _phi(_squared_distances(c, c), order)
    matrix_a = factor * g  # (B, N, N)
    matrix_a += tf.cast(regularization_weight, c.dtype) * tf.eye(n, dtype=c.dtype)
    matrix_b = tf.concat([c, tf.ones_like(c[..., :1])], axis=2)  # (B, N, d+1)

    zeros = tf.zeros([b, d + 1, d + 1], c.dtype)
    lhs = tf.concat(
        [
            tf.concat([matrix_a, matrix_b], axis=2),  # (B, N, N+d+1)
            tf.concat([tf.transpose(matrix_b, [0, 2, 1]), zeros], axis=2),  # (B, d+1, N+d+1)
        ],
        axis=1,
    )  # (B, N+d+1, N+d+1)
    rhs = tf.concat([f, tf.zeros([b, d + 1, k], f.dtype)], axis=1)  # (B, N+d+1, k)
    w_v = tf.linalg.solve(lhs, rhs)  # (B, N+d+1, k)
    return w_v[:, :n, :], w_v[:, n:, :]


def _evaluate(squared_dists, query_points, w, v, order):
    """Spline value at the queries: phi(|q - c|^2) w + [q, 1] v.

    squared_dists (B, M, N), query_points (B or 1, M, d), w (B, N, k), v (B, d+1, k) -> (B, M, k)."""
    factor, g = _phi(squared_dists, order)  # g (B, M, N)
    rbf_term = tf.matmul(g, factor * w)  # (B, M, k)
    query_pad = tf.concat([query_points, tf.ones_like(query_points[..., :1])], axis=2)  # (B|1, M, d+1)
    linear_term = tf.matmul(query_pad, v)  # (B, M, k); matmul broadcasts a batch of 1
    return rbf_term + linear_term


def interpolate_spline(train_points, train_values, query_points, order, regularization_weight=0.0):
    """Polyharmonic spline interpolation, as `tfa.image.interpolate_spline`.

    f(x) = sum_i w_i phi(|x - c_i|) + v^T [x, 1], fitted so that f(c_i) = f_i (exactly when
    regularization_weight is 0; a weight > 0 trades the fit for smoothness). order 1: phi = d,
    order 2: d^2 log d (thin-plate), order 3: d^3, ...

    train_points (B, N, d), train_values (B, N, k), query_points (B, M, d) -> (B, M, k).
    d and k must be static; B, N, M may be dynamic."""
    train_points = tf.convert_to_tensor(train_points)
    train_values = tf.convert_to_tensor(train_values, dtype=train_points.dtype)
    query_points = tf.convert_to_tensor(query_points, dtype=train_points.dtype)

    w, v = _solve_interpolation(train_points, train_values, order, regularization_weight)
    squared_dists = _squared_distances(query_points, train_points)  # (B, M, N)
    return _evaluate(squared_dists, query_points, w, v, order)


# --------------------------------------------------------------------------------------------
# dense warp


def _interpolate_bilinear(image: tf.Tensor, query_points: tf.Tensor) -> tf.Tensor:
    """Sample image (B, H, W, C) at fractional (y, x) query_points (B, H, W, 2) -> (B, H, W, C).

    Same arithmetic as tfa's interpolate_bilinear (indexing="ij"), so the result is bit for bit
    tfa's: the top-left corner is clamped to [0, size - 2] so that its +1 neighbour is always
    inside, and alpha to [0, 1], so a query outside the image takes the nearest edge pixel."""
    b, h, w, c = (_dim(image, i) for i in range(4))

    def corner_and_alpha(queries, size):  # (B, H, W) along one axis
        max_floor = tf.cast(size - 2, queries.dtype)
        floor = tf.minimum(tf.maximum(tf.floor(queries), 0.0), max_floor)
        alpha = tf.clip_by_value(tf.cast(queries - floor, image.dtype), 0.0, 1.0)
        return tf.cast(floor, tf.int32), alpha[..., None]  # alpha (B, H, W, 1) broadcasts over C

    query_y, query_x = tf.unstack(query_points, num=2, axis=-1)  # (B, H, W) each
    y0, alpha_y = corner_and_alpha(query_y, h)
    x0, alpha_x = corner_and_alpha(query_x, w)

    # Fetch the 4 corners with one gather_nd (faster on CPU than 4 gathers or tf.gather) from
    # the image flattened to (B*H*W, C) rows; left column first, then right column.
    top_left = tf.reshape(tf.range(b) * (h * w), [-1, 1, 1]) + y0 * w + x0  # (B, H, W)
    corners = tf.stack([top_left, top_left + w, top_left + 1, top_left + w + 1])  # (4, B, H, W)
    pixels = tf.gather_nd(tf.reshape(image, [-1, c]), corners[..., None])  # (4, B, H, W, C)

    # tfa's top = alpha_x * (tr - tl) + tl and the same for the bottom row, done in one op
    left, right = pixels[:2], pixels[2:]  # (2, B, H, W, C): (tl, bl), (tr, br)
    top, bottom = tf.unstack(alpha_x * (right - left) + left, num=2)  # (B, H, W, C) each
    return alpha_y * (bottom - top) + top


def _pixel_grid(h, w, dtype) -> tf.Tensor:
    """(H, W, 2) with grid[j, i] = (j, i)."""
    ys, xs = tf.meshgrid(tf.range(h), tf.range(w), indexing="ij")
    return tf.cast(tf.stack([ys, xs], axis=-1), dtype)


def dense_image_warp(image, flow):
    """Warp image (B, H, W, C) by a per-pixel flow (B, H, W, 2) in (y, x), as `tfa.image.dense_image_warp`.

    output[b, j, i] = image[b, j - flow[b, j, i, 0], i - flow[b, j, i, 1]], bilinear; locations
    outside the image take the nearest edge pixel. So a pixel of the image moves by +flow (flow
    is the negative of the optical flow from the output back to the image). H, W >= 2."""
    image = tf.convert_to_tensor(image)
    flow = tf.convert_to_tensor(flow)
    grid = _pixel_grid(_dim(image, 1), _dim(image, 2), flow.dtype)  # (H, W, 2)
    return _interpolate_bilinear(image, grid - flow)  # grid broadcasts over B


# --------------------------------------------------------------------------------------------
# sparse warp


def _boundary_points(h, w, num_boundary_points: int) -> tf.Tensor:
    """(4 * num_boundary_points, 2) zero-flow points on the image edges, in tfa's order.

    tfa takes an (n+1) x (n+1) grid of evenly spaced points (n = num_boundary_points) spanning
    the image and keeps those on its border, row by row: the 4 corners and n-1 points inside
    each edge. Which grid cells those are depends only on n, so that part is numpy at trace
    time; the coordinates use tf.linspace so H and W may be dynamic."""
    n = num_boundary_points + 1
    rows, cols = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    on_edge = (rows == 0) | (rows == n - 1) | (cols == 0) | (cols == n - 1)
    zero = tf.constant(0.0, tf.float64)  # float64 then float32, like tfa's np.linspace
    ys = tf.linspace(zero, tf.cast(h - 1, tf.float64), n)  # (n,)
    xs = tf.linspace(zero, tf.cast(w - 1, tf.float64), n)  # (n,)
    points = tf.stack([tf.gather(ys, rows[on_edge]), tf.gather(xs, cols[on_edge])], axis=-1)
    return tf.cast(points, tf.float32)


def sparse_image_warp(
    image,
    source_control_point_locations,
    dest_control_point_locations,
    interpolation_order=2,
    regularization_weight=0.0,
    num_boundary_points=0,
):
    """Warp images so that each source control point moves to its destination, as
    `tfa.image.sparse_image_warp`.

    The displacements dest - source at the destination points are interpolated to a dense flow
    by a polyharmonic spline (`interpolate_spline`, order `interpolation_order`; 2 is the
    thin-plate spline), then the image is warped with it (`dense_image_warp`). With
    regularization_weight = 0, warped[b, dest[b, t]] = image[b, source[b, t]] for every point t.
    num_boundary_points = n > 0 pins the image edges with 4n zero-flow points (n = 1: the
    corners, n = 2: corners and edge midpoints, ...).

    image (B, H, W, C) float; source/dest (B, N, 2) in (y, x) pixels, different for each image.
    Returns (warped_image (B, H, W, C) in the image dtype, dense_flow (B, H, W, 2) float32).
    """
    image = tf.convert_to_tensor(image)
    # the spline is solved in float32 whatever the image dtype, as tfa does for float32 points
    dest = tf.cast(dest_control_point_locations, tf.float32)  # (B, N, 2)
    source = tf.cast(source_control_point_locations, tf.float32)  # (B, N, 2)
    flows = dest - source  # (B, N, 2), the flow is fitted at the destination points
    b, h, w = _dim(image, 0), _dim(image, 1), _dim(image, 2)

    if num_boundary_points > 0:
        edge = _boundary_points(h, w, num_boundary_points)  # (E, 2)
        edge = tf.tile(edge[None], [b, 1, 1])  # (B, E, 2)
        dest = tf.concat([dest, edge], axis=1)  # (B, N+E, 2)
        flows = tf.concat([flows, tf.zeros_like(edge)], axis=1)  # (B, N+E, 2)

    w_rbf, v_lin = _solve_interpolation(dest, flows, interpolation_order, regularization_weight)

    # The queries are every pixel, the same for all images: |q - c|^2 = (qy - cy)^2 + (qx - cx)^2
    # is a row term plus a column term, so build it from (B, H, N) and (B, W, N) pieces.
    ys = tf.cast(tf.range(h), tf.float32)  # (H,)
    xs = tf.cast(tf.range(w), tf.float32)  # (W,)
    dy2 = tf.square(ys[None, :, None] - dest[:, None, :, 0])  # (B, H, N)
    dx2 = tf.square(xs[None, :, None] - dest[:, None, :, 1])  # (B, W, N)
    squared_dists = dy2[:, :, None, :] + dx2[:, None, :, :]  # (B, H, W, N)
    squared_dists = tf.reshape(squared_dists, [b, h * w, -1])  # (B, H*W, N)

    grid = _pixel_grid(h, w, tf.float32)  # (H, W, 2)
    flat_grid = tf.reshape(grid, [1, h * w, 2])  # (1, H*W, 2)
    dense_flow = _evaluate(squared_dists, flat_grid, w_rbf, v_lin, interpolation_order)  # (B, H*W, 2)
    dense_flow = tf.reshape(dense_flow, [b, h, w, 2])

    warped = _interpolate_bilinear(image, grid - dense_flow)
    return warped, dense_flow
