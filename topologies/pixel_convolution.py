"""The seed's Flink job, done right: pixels in; a 3x3 blur and a LoG out, as pixels.

Input: pixel messages ``name;frame;x;y;v`` on ``pixels`` (``streamimg produce-pixels``),
assembled into frames of PIXEL_FRAME_SIZE (env, ``HEIGHTxWIDTH``, default 512x512).
Outputs, exactly-once: ``pixel_convolution.blur`` (3x3 box blur) and
``pixel_convolution.log`` (Laplacian of Gaussian, sigma 1.4, 11x11), both with the
seed's periodic boundary; incomplete frames go out with a mask after 10 s.
"""

import os

from streamimg import PixelFrames, Topology
from streamimg.operators import kernels

height, width = (int(n) for n in os.environ.get("PIXEL_FRAME_SIZE", "512x512").split("x"))
topology = Topology("pixel_convolution", inputs="pixels", max_frames=4, max_wait_ms=100,
                    pixels=PixelFrames(height=height, width=width, window_ms=10_000))

frames = topology.source
frames.convolve(kernels.box(3), boundary="wrap").to_kafka_pixels("pixel_convolution.blur")
frames.convolve(kernels.laplacian_of_gaussian(1.4, 11), boundary="wrap").to_kafka_pixels(
    "pixel_convolution.log")
