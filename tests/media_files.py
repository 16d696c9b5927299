"""Media files for tests: videos written from frames."""

from collections.abc import Sequence

import numpy as np
from PIL import Image


def encode_video(frames: Sequence[Image.Image | np.ndarray], path: str, fps: float = 2.0) -> None:
    """Writes frames as a near-lossless MPEG-4 file."""
    import av

    arrays = [np.asarray(f.convert("RGB") if isinstance(f, Image.Image) else f) for f in frames]
    h, w = arrays[0].shape[:2]
    with av.open(path, mode="w") as container:
        stream = container.add_stream("mpeg4", rate=int(round(fps)))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"qscale": "1"}
        for a in arrays:
            for packet in stream.encode(av.VideoFrame.from_ndarray(a, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
