import math

import dask
import dask.array as da
import numpy as np
import pytest

from streamimg.operators.stencils import diffuse, heat_step, stability_bound

PAD = {"nearest": "edge", "wrap": "wrap", "constant": "constant"}


@pytest.fixture(autouse=True)
def _sync_scheduler():
    with dask.config.set(scheduler="synchronous"):
        yield


def reference(field, steps, alpha, dt, dx, source=0.0, boundary="nearest", cval=0.0):
    """Plain NumPy FTCS, written like the seed: (1 - 2 d r) T + r * sum(neighbours) + dt q."""
    t = np.asarray(field, dtype=np.float64)
    d = t.ndim
    r = alpha * dt / dx**2
    kw = {"constant_values": cval} if boundary == "constant" else {}
    inner = (slice(1, -1),) * d
    for _ in range(steps):
        p = np.pad(t, 1, mode=PAD[boundary], **kw)
        neighbours = np.zeros_like(t)
        for ax in range(d):
            for lo, hi in ((0, -2), (2, None)):
                sl = list(inner)
                sl[ax] = slice(lo, hi)
                neighbours += p[tuple(sl)]
        t = (1 - 2 * d * r) * t + r * neighbours + dt * np.asarray(source)
    return t


RNG = np.random.default_rng(0)
FIELD2 = RNG.random((30, 41))
SOURCE2 = RNG.standard_normal((30, 41))
FIELD3 = RNG.random((9, 10, 11))
SOURCE3 = RNG.standard_normal((9, 10, 11))


@pytest.mark.parametrize("boundary", ["nearest", "wrap", "constant"])
@pytest.mark.parametrize("field, source", [(FIELD2, SOURCE2), (FIELD3, SOURCE3)])
def test_single_step_numpy_matches_reference(field, source, boundary):
    r = stability_bound(field.ndim)  # exactly at the bound is allowed
    got = heat_step(field, 1.0, r, 1.0, source=source, boundary=boundary, cval=2.0)
    assert isinstance(got, np.ndarray)
    ref = reference(field, 1, 1.0, r, 1.0, source, boundary, 2.0)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("boundary", ["nearest", "wrap", "constant"])
@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize("chunks", [(30, 41), (8, 11), (3, 4)])  # (3, 4): thinner than k=5
def test_dask_diffuse_2d_matches_reference(chunks, k, boundary):
    field = da.from_array(FIELD2, chunks=chunks)
    out = diffuse(field, 7, 0.7, 0.3, 1.0, source=SOURCE2, boundary=boundary, cval=-1.0,
                  steps_per_exchange=k)
    assert isinstance(out, da.Array)
    ref = reference(FIELD2, 7, 0.7, 0.3, 1.0, SOURCE2, boundary, -1.0)
    np.testing.assert_allclose(out.compute(), ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("boundary", ["nearest", "wrap", "constant"])
@pytest.mark.parametrize("source", [None, 0.25, "array", "dask"])
def test_dask_diffuse_3d_matches_reference(boundary, source):
    src = {None: None, 0.25: 0.25, "array": SOURCE3,
           "dask": da.from_array(SOURCE3, chunks=(9, 3, 4))}[source]
    out = diffuse(da.from_array(FIELD3, chunks=(4, 5, 6)), 7, 2.0, 0.02, 0.5, source=src,
                  boundary=boundary, cval=3.0, steps_per_exchange=3)
    ref_src = 0.0 if source is None else (SOURCE3 if isinstance(source, str) else source)
    ref = reference(FIELD3, 7, 2.0, 0.02, 0.5, ref_src, boundary, 3.0)
    np.testing.assert_allclose(out.compute(), ref, rtol=0, atol=1e-12)


def test_tiny_axis_shorter_than_halo():
    field = RNG.random((3, 40))
    out = diffuse(da.from_array(field, chunks=(1, 10)), 9, 1.0, 0.2, 1.0, boundary="wrap",
                  steps_per_exchange=5)
    np.testing.assert_allclose(out.compute(), reference(field, 9, 1.0, 0.2, 1.0, 0.0, "wrap"),
                               atol=1e-12)


def test_graph_has_one_layer_per_exchange():
    field = da.from_array(FIELD2, chunks=(10, 14))

    def layers(out):
        return sum(name.startswith("_steps") for name in out.__dask_graph__().layers)

    assert layers(diffuse(field, 20, 1.0, 0.2, 1.0, steps_per_exchange=5)) == 4
    assert layers(diffuse(field, 21, 1.0, 0.2, 1.0, steps_per_exchange=5)) == 5
    assert layers(diffuse(field, 20, 1.0, 0.2, 1.0, steps_per_exchange=1)) == 20
    assert layers(heat_step(field, 1.0, 0.2, 1.0)) == 1


def test_numpy_diffuse_equals_reference_and_integers_become_float():
    field = (FIELD2 * 100).astype(np.int16)
    out = diffuse(field, 5, 1.0, 0.25, 1.0, boundary="nearest")
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, reference(field, 5, 1.0, 0.25, 1.0), atol=1e-11)
    assert diffuse(FIELD2.astype(np.float32), 2, 1.0, 0.2, 1.0).dtype == np.float32


@pytest.mark.parametrize("boundary", ["nearest", "wrap"])
def test_heat_is_conserved_without_source(boundary):
    out = diffuse(da.from_array(FIELD3, chunks=5), 30, 1.0, 0.15, 1.0, boundary=boundary)
    assert float(out.sum()) == pytest.approx(FIELD3.sum(), rel=1e-13)


def test_dirichlet_wall_pulls_towards_cval_and_keeps_maximum_principle():
    out = diffuse(np.zeros((20, 20)), 400, 1.0, 0.25, 1.0, boundary="constant", cval=1.0)
    assert out.min() > 0 and out.max() < 1  # strictly between initial and wall values
    assert out[0, 10] > out[10, 10]  # warmer near the wall


@pytest.mark.parametrize("ndim, bound", [(2, 0.25), (3, 1 / 6)])
def test_unstable_step_is_refused(ndim, bound):
    field = np.zeros((6,) * ndim)
    heat_step(field, 1.0, bound, 1.0)  # at the bound: fine
    with pytest.raises(ValueError) as info:
        heat_step(field, 1.0, bound * 1.01, 1.0)
    msg = str(info.value)
    assert f"1/(2*{ndim})" in msg and f"{bound:.6g}" in msg and f"{bound * 1.01:.6g}" in msg
    with pytest.raises(ValueError, match="stability"):
        diffuse(da.zeros((6,) * ndim), 3, 2.0, 1.0, 2.0 * math.sqrt(2) * 0.99)


@pytest.mark.parametrize("kwargs, match", [
    (dict(field=np.zeros(5)), "2-D or 3-D"),
    (dict(field=np.zeros((2, 2, 2, 2))), "2-D or 3-D"),
    (dict(boundary="reflect"), "'reflect'"),
    (dict(alpha=-1.0), "alpha"),
    (dict(dt=0.0), "dt"),
    (dict(dx=float("nan")), "dx"),
    (dict(source=np.zeros((3, 3))), r"\(3, 3\)"),
    (dict(steps=-1), "steps"),
    (dict(steps_per_exchange=0), "steps_per_exchange"),
])
def test_bad_arguments(kwargs, match):
    args = dict(field=np.zeros((4, 5)), steps=1, alpha=1.0, dt=0.1, dx=1.0)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        diffuse(**args)


# --- physics: a Gaussian pulse spreads with variance sigma0^2 + 2 alpha t per axis ---------


def _pulse(n, ndim, length=16.0, sigma0=1.0):
    dx = length / n
    x = (np.arange(n) + 0.5) * dx - length / 2
    grids = np.meshgrid(*([x] * ndim), indexing="ij")
    r2 = sum(g * g for g in grids)
    return grids, r2, dx, np.exp(-r2 / (2 * sigma0**2))


@pytest.mark.parametrize("ndim", [2, 3])
def test_pulse_variance_grows_by_two_alpha_t(ndim):
    n = 40 if ndim == 2 else 30
    grids, _, dx, t0 = _pulse(n, ndim, length=20.0)
    alpha = 0.8
    dt = 0.9 * stability_bound(ndim) * dx**2 / alpha
    steps = math.ceil(0.5 / (alpha * dt))  # 2 alpha t ~ 1: final sigma ~ 1.4, edges at 7 sigma
    field = da.from_array(t0, chunks=n // 2)
    out = diffuse(field, steps, alpha, dt, dx, boundary="wrap", steps_per_exchange=8).compute()

    def variance(t, g):
        return float((t * g * g).sum() / t.sum())

    for g in grids:
        # The discrete second moment of FTCS grows by exactly 2 r dx^2 = 2 alpha dt per step
        # on an unbounded grid; the periodic images of the tails are ~1e-10 here.
        growth = variance(out, g) - variance(t0, g)
        assert growth == pytest.approx(2 * alpha * dt * steps, rel=1e-9)


def test_pulse_matches_analytic_solution_to_second_order():
    alpha, t_end, sigma0 = 1.0, 1.0, 1.0
    errors = []
    for n in (32, 64, 128):
        _, r2, dx, t0 = _pulse(n, 2, sigma0=sigma0)
        steps = math.ceil(t_end / (0.2 * dx**2 / alpha))  # r <= 0.2, so dt ~ dx^2
        out = diffuse(t0, steps, alpha, t_end / steps, dx, boundary="wrap")
        s2 = sigma0**2 + 2 * alpha * t_end
        exact = sigma0**2 / s2 * np.exp(-r2 / (2 * s2))
        errors.append(float(np.abs(out - exact).max()))
    # O(dt + dx^2) with dt proportional to dx^2: halving dx divides the error by ~4.
    assert errors[0] < 5e-3
    for coarse, fine in zip(errors, errors[1:], strict=False):
        assert 3.5 < coarse / fine < 4.5, errors


def test_the_stream_api_diffuses_each_frame_and_channel_as_the_library_does():
    """stream.diffuse / heat_step in a topology equal diffuse() per frame and channel; an
    unstable step or unknown boundary fails when the topology is written."""
    import streamimg
    from streamimg.batching import FrameInfo
    from streamimg.codecs.frame import FrameHeader, decode_payload, parse_header
    from streamimg.topology import TopologyError
    from streamimg.worker import array_block, run_program

    t = streamimg.Topology("heat", inputs="in", frame_shape=(12, 10, 3))
    t.source.diffuse(5, alpha=0.2, boundary="wrap").to_kafka_frames(encoding="raw", topic="a")
    t.source.heat_step(alpha=0.25, boundary="constant", cval=7.0).to_kafka_frames(
        encoding="raw", topic="b")
    program = t.check()
    frame = np.random.default_rng(0).integers(0, 256, (12, 10, 3), dtype=np.uint8)
    info = FrameInfo("in", 0, 0, b"s", FrameHeader("s", 0, 0, 12, 10, 3, "uint8", "raw", "RGB"))
    result = run_program(program, [info], [frame], array_block, "r")
    assert result.failures == []
    for s, (steps, kw) in enumerate(((5, {"alpha": 0.2, "boundary": "wrap"}),
                                     (1, {"alpha": 0.25, "boundary": "constant", "cval": 7.0}))):
        (_, value, headers), = result.records[s][0]
        out = decode_payload(parse_header(headers), value)
        assert out.dtype == np.float64
        for c in range(3):
            expect = diffuse(frame[:, :, c], steps, dt=1.0, dx=1.0, **kw)
            np.testing.assert_array_equal(out[:, :, c], expect)
    with pytest.raises(TopologyError, match="diffuse: unstable time step"):
        streamimg.Topology("heat2", inputs="in").source.diffuse(3, alpha=0.3)
    with pytest.raises(TopologyError, match="diffuse: boundary must be one of"):
        streamimg.Topology("heat3", inputs="in").source.heat_step(boundary="reflect")
