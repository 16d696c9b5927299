"""Opening images and videos safely: a pixel limit against decompression bombs, PyAV for video
files, at most N evenly spaced frames per video, and the sampled frame rate."""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from collections.abc import Sequence

from PIL import Image

from urt_jax.data.media_cache import CheckedMedia
from urt_jax.data.processor import sample_frame_indices
from urt_jax.data.records import Media

DEFAULT_MAX_IMAGE_PIXELS = 89_478_485  # PIL's own warning threshold (~ 9459 x 9459)
DEFAULT_FRAMES_FPS = 2.0  # rate assumed for a video given as frame images


class MediaError(ValueError):
    """A media file that is missing, undecodable or too large."""


def open_image(src: str | bytes, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
    """A fully decoded PIL image; the size is checked from the header before decoding."""
    name = "<bytes>" if isinstance(src, bytes) else src
    if isinstance(src, str) and not os.path.isfile(src):
        raise MediaError(f"{name}: image file not found")
    try:
        with warnings.catch_warnings():  # the size is checked here, against max_pixels
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(src) if isinstance(src, bytes) else src)
        if image.width * image.height > max_pixels:
            raise MediaError(
                f"{name}: {image.width}x{image.height} exceeds the limit of {max_pixels} pixels"
            )
        image.load()
    except MediaError:
        raise
    except (OSError, Image.DecompressionBombError, ValueError, SyntaxError) as e:
        raise MediaError(f"{name}: cannot decode image ({e})") from None
    return image


def load_video(
    media: Media, max_frames: int = 8, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
) -> tuple[list[Image.Image], float]:
    """At most ``max_frames`` evenly spaced frames and their effective frame rate."""
    if media.frames is not None:
        idx = sample_frame_indices(len(media.frames), max_frames)
        fps = media.fps or DEFAULT_FRAMES_FPS
        frames = [open_image(media.frames[i], max_pixels) for i in idx]
        return frames, fps * len(idx) / len(media.frames)
    src = media.path if media.path is not None else media.data
    return decode_video(src, max_frames, max_pixels)


@contextlib.contextmanager
def open_video(src: str | bytes, max_pixels: int | None):
    """(container, first video stream, name) of a video file or its bytes, the frame size
    checked against ``max_pixels`` (None: any size); any decoding error inside becomes a
    MediaError naming it."""
    import av  # PyAV: FFmpeg bindings

    name = "<bytes>" if isinstance(src, bytes) else src
    if isinstance(src, str) and not os.path.isfile(src):
        raise MediaError(f"{name}: video file not found")
    try:
        with av.open(io.BytesIO(src) if isinstance(src, bytes) else src) as container:
            if not container.streams.video:
                raise MediaError(f"{name}: no video stream")
            stream = container.streams.video[0]
            if max_pixels is not None and stream.width * stream.height > max_pixels:
                raise MediaError(
                    f"{name}: {stream.width}x{stream.height} frames exceed the "
                    f"limit of {max_pixels} pixels"
                )
            yield container, stream, name
    except MediaError:
        raise
    except (av.error.FFmpegError, OSError, ValueError) as e:
        raise MediaError(f"{name}: cannot decode video ({e})") from None


def decode_video(
    src: str | bytes, max_frames: int = 8, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
) -> tuple[list[Image.Image], float]:
    with open_video(src, max_pixels) as (container, stream, name):
        rate = float(stream.average_rate or stream.guessed_rate or DEFAULT_FRAMES_FPS)
        frames = [f.to_image() for f in container.decode(stream)]
    if not frames:
        raise MediaError(f"{name}: the video has no frames")
    idx = sample_frame_indices(len(frames), max_frames)
    return [frames[i] for i in idx], rate * len(idx) / len(frames)


def check_media(media: Media, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> None:
    """Raises MediaError if ``media`` cannot be used: a missing, empty, truncated or undecodable
    image (decoded whole: a truncated file shows only then), one over ``max_pixels`` (from its
    header, before decoding); a video that cannot be opened, has no video stream, has frames
    over the limit or whose first frame does not decode; a frame list with any such frame."""
    if media.kind == "image":
        open_image(media.path if media.path is not None else media.data, max_pixels)
        return
    if media.frames is not None:
        for frame in media.frames:
            open_image(frame, max_pixels)
        return
    src = media.path if media.path is not None else media.data
    with open_video(src, max_pixels) as (container, stream, name):
        if next(container.decode(stream), None) is None:
            raise MediaError(f"{name}: the video has no frames")


def check_all_media(
    records: Sequence,
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    workers: int | None = None,
    checked: CheckedMedia | None = None,
) -> dict[int, str]:
    """{index of a record: why one of its media cannot be used}, every record's media checked
    (``check_media``) in parallel threads (decoders release the GIL). Files ``checked`` records
    as passed, unchanged since, are not opened again; the new passes are added to it."""
    from concurrent.futures import ThreadPoolExecutor

    def problem(record) -> str | None:
        try:
            for m in record.media:
                key = checked.key(m, max_pixels) if checked is not None else None
                if key is not None and key in checked:
                    continue
                check_media(m, max_pixels)
                if key is not None:
                    checked.add(key)
        except MediaError as e:
            return str(e)
        return None

    workers = workers or min(32, 4 * (os.cpu_count() or 1))
    try:
        with ThreadPoolExecutor(workers) as pool:
            found = list(pool.map(problem, records))
    finally:
        if checked is not None:
            checked.save()  # the passes so far, also when interrupted
    return {i: p for i, p in enumerate(found) if p is not None}
