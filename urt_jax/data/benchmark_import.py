"""``urt-jax data import BENCHMARK SRC OUT_DIR``: the paper's four preference benchmarks, read from
the files their authors publish, written as native records with their media.

SRC is one published file (parquet, CSV, JSON or JSONL) or the folder it was downloaded into; in
a folder the benchmark's own files are found by name (``tables.LAYOUTS``), shards in sorted
order. What each reader takes, and how it reads the label (as the release's evaluation scripts in
``UnifiedReward-Think/benchmark_evaluation`` do):

- ``vl-rewardbench`` (image understanding), MMInstruction/VL-RewardBench
  ``data/test-*.parquet``, or the release's ``VL-RewardBench/data.json`` (its ``image`` a path
  such as ``images/<id>.png`` beside the JSON). Columns: ``id``, ``query`` (the prompt),
  ``response`` (the two answers, in published order), ``image`` (an HF Image struct
  ``{bytes, path}``, or a path), ``human_ranking`` (``[0, 1]``: answer 1 is better, ``[1, 0]``:
  answer 2); ``models``, ``judge``, ``rationale``, ``query_source``, ``ground_truth`` are not used.
  The subset is the release script's group: the id's prefix up to its first ``_`` or ``-``
  (case-sensitive) ``RLAIF``/``RLHF`` hallucination, ``mathverse``/``mmmu`` reasoning, anything
  else general (``wildvision`` and, as the script has it, the POVID ids ``hallucination_pair-*``).
- ``genai-bench-image`` (image generation), TIGER-Lab/GenAI-Bench config ``image_generation``,
  split ``test`` (``image_generation/test-*.parquet``). Columns: ``prompt``, ``left_image`` and
  ``right_image`` (HF Image structs), ``vote_type``; ``left_model``/``right_model`` not used.
- ``genai-bench-video`` (video generation), TIGER-Lab/GenAI-Bench config ``video_generation``,
  split ``test`` (``video_generation/test-*.parquet``: ``prompt``, ``left_video``,
  ``right_video`` (URLs), ``vote_type``), or the release's ``GenAI-Bench-Video/data.json``
  (``id``, ``prompt``, ``video_left``, ``video_right`` (file names), ``vote_type``). A URL is
  looked up by its file name, as GenAI-Bench's own loader caches it; nothing is downloaded.
- ``videogen-rewardbench`` (video generation), KlingTeam (formerly KwaiVGI)
  /VideoGen-RewardBench ``videogen-rewardbench.csv`` (or a parquet with the same columns):
  ``path_A``, ``path_B`` (``videos/<model>/<file>.mp4``, relative to the CSV's folder),
  ``prompt``, ``Overall`` (``A``, ``B`` or ``same``); ``A_model``, ``B_model``, ``VQ``, ``MQ``,
  ``TA``, ``fps_*``, ``num_frames_*`` are not used.

GenAI-Bench votes: ``tie`` or ``both`` in ``vote_type`` (``tievote``, ``bothbad_vote``) is a tie,
else ``left`` candidate 1 is better, else ``right`` candidate 2. Ties are written with the verdict
``tie``. Each record keeps the published row order, the candidates in published order, and a
``benchmark`` tag: the name, the item's id (the benchmark's own, else its row index from 0 over
all files read), its subset and its label exactly as published.

Media are written under ``OUT_DIR/media/BENCHMARK`` and named relative to OUT_DIR in the records:
embedded images as their original encoded bytes (``embedded/<row>[_<k>].<png|jpg|...>``), files
under their published relative path (``media/videos/...``), hard-linked where possible, else
copied; each is decoded (images) or opened (videos) first. Files are looked for beside the source
file, then (videos) in a ``videos/`` folder beside it, then in ``media_dirs``. A row that cannot
be converted is skipped and reported as ``FILE:row N: what is wrong``; the rest is written.
``OUT_DIR/{name}.jsonl`` is written whole or not at all, with a dataset YAML ``OUT_DIR/{name}.yaml``
naming it and OUT_DIR as its media folder.
"""

from __future__ import annotations

import dataclasses
import os
import posixpath
import secrets
import shutil
import sys
import urllib.parse
from collections import Counter
from collections.abc import Callable, Sequence

import yaml

from urt_jax.atomic import replace_with
from urt_jax.data.benchmarks.convert import CONVERTERS, Embedded, Item, MediaRef, RowError
from urt_jax.data.benchmarks.tables import SourceError, iter_rows, source_files
from urt_jax.data.media import MediaError, open_image, open_video
from urt_jax.data.readers import MediaResolver, parse_record, write_dataset_yaml, write_jsonl
from urt_jax.data.records import BENCHMARKS, TIE, RecordError

_IMAGE_EXTENSIONS = {"JPEG": "jpg", "TIFF": "tif"}


@dataclasses.dataclass
class ImportReport:
    """What an import wrote and which rows it could not convert."""

    benchmark: str
    out_path: str  # OUT_DIR/{name}.jsonl
    yaml_path: str  # OUT_DIR/{name}.yaml
    sources: list[str]
    records: int = 0
    subsets: dict[str, int] = dataclasses.field(default_factory=dict)
    ties: int = 0
    problems: list[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        lines = [
            f"{self.benchmark}: {self.records} records written to {self.out_path} "
            f"(dataset YAML: {self.yaml_path}; every benchmark imported into this folder: "
            f"{os.path.join(os.path.dirname(self.out_path), 'benchmarks.yaml')})",
            f"  read: {', '.join(self.sources)}",
        ]
        if self.subsets:
            lines.append(
                "  per subset: " + ", ".join(f"{k} {v}" for k, v in sorted(self.subsets.items()))
            )
        lines.append(f"  ties: {self.ties}")
        if self.problems:
            lines.append(f"  {len(self.problems)} problem(s), rows skipped:")
            lines += [f"    {p}" for p in self.problems]
        return "\n".join(lines)


def _check(src: str | bytes, kind: str) -> str:
    """The file extension for a medium, after checking that it decodes (images) or opens
    (videos); a RowError when it does not."""
    try:
        if kind == "image":
            fmt = open_image(src).format or "png"
            return _IMAGE_EXTENSIONS.get(fmt, fmt.lower())
        with open_video(src, max_pixels=None):  # opens it and finds its video stream
            pass
        return "mp4"
    except MediaError as e:
        raise RowError(str(e)) from None


def _published_relpath(path: str) -> str:
    """Where a published file goes under media/: its relative path, or its name when the path
    is absolute or climbs out of its folder."""
    norm = posixpath.normpath(path.replace(os.sep, "/"))
    if os.path.isabs(path) or norm == ".." or norm.startswith("../"):
        return posixpath.basename(norm)
    return norm


class _MediaStore:
    """Plans and writes media under OUT_DIR/media; a file used by several rows is written once."""

    def __init__(self, out_dir: str, benchmark: str):
        self.out_dir = out_dir
        self.prefix = f"media/{benchmark}"  # each benchmark apart: one OUT_DIR may hold all four
        self.owner: dict[str, str] = {}  # media path -> what it holds
        self.checked: dict[str, str] = {}  # source file -> extension, once checked
        self.written: set[str] = set()

    def _claim(self, dest: str, what: str) -> None:
        held = self.owner.setdefault(dest, what)
        if held != what:
            raise RowError(f"{dest} would hold both {held} and {what}")

    def plan(
        self, ref: MediaRef, kind: str, dirs: Sequence[str], stem: str
    ) -> tuple[str, Callable[[], None]]:
        """(path relative to OUT_DIR, the write), after the medium has been found and checked."""
        if isinstance(ref, Embedded):
            ext = _check(ref.data, kind)
            if kind == "video" and ref.name and "." in ref.name:
                ext = ref.name.rsplit(".", 1)[1].lower()
            dest = f"{self.prefix}/embedded/{stem}.{ext}"
            self._claim(dest, f"the embedded {kind} of row {stem}")
            data = ref.data
            return dest, lambda: self._write(
                dest, lambda full: replace_with(full, lambda f: f.write(data), binary=True)
            )
        source, rel = self._find(ref.path, kind, dirs)
        if source not in self.checked:
            self.checked[source] = _check(source, kind)
        dest = f"{self.prefix}/{rel}"
        self._claim(dest, source)
        return dest, lambda: self._write(dest, lambda full: _place(source, full))

    def _find(self, value: str, kind: str, dirs: Sequence[str]) -> tuple[str, str]:
        url = value.startswith(("http://", "https://"))
        name = posixpath.basename(urllib.parse.urlparse(value).path) if url else value
        if not name:
            raise RowError(f"{kind} URL {value!r} names no file")
        for folder in dirs:
            candidate = name if os.path.isabs(name) else os.path.join(folder, name)
            if os.path.isfile(candidate):
                return os.path.realpath(candidate), _published_relpath(name)
        looked = ", ".join(dirs)
        if url:
            raise RowError(
                f"{kind} {value!r}: no local copy {name!r} in {looked} (download it there; "
                "the import fetches nothing)"
            )
        raise RowError(f"{kind} file {value!r} not found in {looked}")

    def _write(self, dest: str, write: Callable[[str], None]) -> None:
        if dest not in self.written:
            write(os.path.join(self.out_dir, dest))
            self.written.add(dest)


def _place(source: str, full: str) -> None:
    """``source`` at ``full``: a hard link where the file system allows one, else a copy; put in
    place by a rename, so ``full`` is never half written."""
    if os.path.exists(full) and os.path.samefile(source, full):
        return
    directory, base = os.path.split(full)
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{base}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
        os.replace(tmp, full)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise


def _native(name: str, item: Item, rid: str, media: list[str]) -> dict:
    # the record's id names the benchmark: one evaluation may hold several benchmarks' items
    obj: dict = {
        "id": f"{name}/{rid}",
        "task": item.task,
        "mode": "pairwise",
        "prompt": item.prompt,
    }
    if item.answers:
        obj["answers"] = list(item.answers)
    obj["videos" if item.task.startswith("video") else "images"] = media
    obj["verdict"] = item.verdict
    obj["benchmark"] = {"name": name, "id": rid, "subset": item.subset, "label": item.label}
    return obj


def _search_dirs(path: str, kind: str, media_dirs: Sequence[str]) -> list[str]:
    here = os.path.dirname(os.path.abspath(path))
    extra = [os.path.join(here, "videos")] if kind == "video" else []
    return [here, *extra, *(os.path.abspath(d) for d in media_dirs)]


class _Converter:
    """Rows of one benchmark to native records, their media written under OUT_DIR/media."""

    def __init__(self, name: str, out_dir: str, media_dirs: Sequence[str]):
        self.name = name
        self.convert = CONVERTERS[name]
        self.media_dirs = media_dirs
        self.store = _MediaStore(out_dir, name)
        self.resolve = MediaResolver(out_dir)
        self.seen: dict[str, str] = {}  # record id -> where it was first used

    def __call__(self, row: dict | str, index: int, path: str, where: str) -> tuple[dict, Item]:
        """The record of one row (a RowError, RecordError or OSError when there is none)."""
        if isinstance(row, str):
            raise RowError(row)
        item = self.convert(row)
        rid = item.item_id if item.item_id is not None else str(index)
        if rid in self.seen:
            raise RowError(f"id {rid!r} is already used by {self.seen[rid]}")
        kind = "video" if item.task.startswith("video") else "image"
        dirs = _search_dirs(path, kind, self.media_dirs)
        many = len(item.media) > 1
        plans = [
            self.store.plan(ref, kind, dirs, f"{index:06d}" + (f"_{k + 1}" if many else ""))
            for k, ref in enumerate(item.media)
        ]
        obj = _native(self.name, item, rid, [dest for dest, _ in plans])
        parse_record(obj, self.resolve, where, index)
        for _, write in plans:
            write()
        self.seen[rid] = where
        return obj, item


def import_benchmark(
    name: str, src: str, out_dir: str, media_dirs: Sequence[str] = ()
) -> ImportReport:
    """Reads benchmark ``name`` from ``src`` (a published file or the folder holding them) and
    writes OUT_DIR/{name}.jsonl, OUT_DIR/{name}.yaml and the media under OUT_DIR/media.
    ``media_dirs``: more folders to look for media files in. Raises ValueError for an unknown
    benchmark or a source with no files to read; every row-level problem goes to the report."""
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; one of {', '.join(BENCHMARKS)}")
    files = source_files(name, src)
    out_dir = os.path.abspath(out_dir)
    report = ImportReport(
        name, os.path.join(out_dir, f"{name}.jsonl"), os.path.join(out_dir, f"{name}.yaml"), files
    )
    to_record = _Converter(name, out_dir, media_dirs)
    records: list[dict] = []
    subsets: Counter[str] = Counter()
    index = 0  # over all the files' rows, in order
    for path in files:
        try:
            for number, row in iter_rows(path):
                where = f"{path}:row {number}"
                index += 1
                try:
                    obj, item = to_record(row, index - 1, path, where)
                except RowError as e:
                    report.problems.append(f"{where}: {e}")
                    continue
                except RecordError as e:
                    report.problems.append(str(e))
                    continue
                except OSError as e:
                    report.problems.append(f"{where}: cannot write its media ({e})")
                    continue
                records.append(obj)
                subsets.update([item.subset] if item.subset is not None else [])
                report.ties += int(item.verdict == TIE)
        except SourceError as e:
            report.problems.append(str(e))
    write_jsonl(report.out_path, records)
    write_dataset_yaml(report.yaml_path, report.out_path, out_dir)
    write_benchmarks_yaml(out_dir)
    report.records = len(records)
    report.subsets = dict(subsets)
    return report


def write_benchmarks_yaml(out_dir: str) -> str:
    """OUT_DIR/benchmarks.yaml: a dataset YAML listing every benchmark imported into OUT_DIR, so
    that one evaluation (``data.heldout=OUT_DIR/benchmarks.yaml``) fills the paper's table."""
    entries = [
        {"json_path": os.path.join(out_dir, f"{b}.jsonl"), "image_folder": out_dir}
        for b in BENCHMARKS
        if os.path.isfile(os.path.join(out_dir, f"{b}.jsonl"))
    ]
    path = os.path.join(out_dir, "benchmarks.yaml")
    text = yaml.safe_dump({"datasets": entries}, sort_keys=False)
    replace_with(path, lambda f: f.write(text))
    return path


def main(name: str, src: str, out_dir: str, media_dirs: Sequence[str] = ()) -> int:
    """Imports, prints the summary (records, per subset, ties, each problem); 0 when every row
    was converted, else 1."""
    try:
        report = import_benchmark(name, src, out_dir, media_dirs)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(report.summary())
    return 0 if report.ok else 1
