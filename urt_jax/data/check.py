"""``urt-jax data check FILE``: every problem of a data file (or of every file a dataset YAML
lists), each with its file and line.

Checks: malformed JSON, missing or mistyped fields, verdicts outside the accepted strings,
multi-turn dialogues, ``<image>``/``<video>`` tags that do not match the media, media paths that
escape the data root, missing or undecodable media (images opened with a pixel limit), an empty
file, invalid UTF-8, and, when a tokenizer is given, samples longer than ``max_length`` after
tokenisation.
"""

from __future__ import annotations

import dataclasses

from urt_jax.data.examples import ExampleBuilder
from urt_jax.data.media import DEFAULT_MAX_IMAGE_PIXELS, MediaError, load_video, open_image
from urt_jax.data.processor import ImageError
from urt_jax.data.readers import read_records
from urt_jax.data.records import RecordError


@dataclasses.dataclass
class CheckReport:
    path: str
    records: int = 0
    problems: list[str] = dataclasses.field(default_factory=list)
    lengths: list[int] = dataclasses.field(default_factory=list)  # tokens per record (builder)

    @property
    def ok(self) -> bool:
        return not self.problems


def check_file(
    path: str,
    data_root: str | None = None,
    builder: ExampleBuilder | None = None,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    max_frames: int = 8,
) -> CheckReport:
    report = CheckReport(path)
    for item in read_records(path, data_root):
        report.records += 1
        if isinstance(item, RecordError):
            report.problems.append(str(item))
            continue
        try:
            if builder is not None:
                # decodes media and tokenises as training does: covers every check below
                report.lengths.append(len(builder(item)["input_ids"]))
                continue
            for m in item.media:
                if m.kind == "image":
                    open_image(m.path if m.path is not None else m.data, max_image_pixels)
                else:
                    load_video(m, max_frames, max_image_pixels)
        except RecordError as e:  # includes ExampleTooLong, which already names the line
            report.problems.append(str(e))
        except (MediaError, ImageError, ValueError) as e:
            report.problems.append(f"{item.source}: {e}")
    if report.records == 0:
        report.problems.append(f"{path}: no records (an empty data file)")
    return report
