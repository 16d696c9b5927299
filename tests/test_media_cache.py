"""The pre-flight media check remembers files that passed, and checks changed ones again."""

import os

import numpy as np
from PIL import Image

from tests.media_files import encode_video
from urt_jax.data.media import check_all_media
from urt_jax.data.media_cache import CheckedMedia
from urt_jax.data.records import Media


class _Record:
    def __init__(self, *media: Media):
        self.media = media


def _png(path, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)).save(path)
    return str(path)


def _spoil_keeping_stat(path: str) -> None:
    """Overwrites the file in place with garbage of the same size and restores its mtime: the
    same inode, size and modification time, so only a decode can tell."""
    st = os.stat(path)
    with open(path, "r+b") as fh:
        fh.write(b"\0" * st.st_size)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_passed_files_are_not_opened_again(tmp_path):
    image = _png(tmp_path / "a.png")
    video = str(tmp_path / "v.mp4")
    encode_video([np.full((28, 28, 3), 9 * i, np.uint8) for i in range(4)], video)
    records = [_Record(Media("image", path=image)), _Record(Media("video", path=video))]
    cache_file = str(tmp_path / "cache" / "checked.jsonl")

    assert check_all_media(records, checked=CheckedMedia(cache_file)) == {}
    with open(cache_file) as fh:
        assert len(fh.readlines()) == 2

    _spoil_keeping_stat(image)
    assert check_all_media(records) == {0: check_all_media(records)[0]}  # a decode sees it
    assert "cannot decode image" in check_all_media(records)[0]
    # remembered: the unchanged (to stat) file is not decoded again
    assert check_all_media(records, checked=CheckedMedia(cache_file)) == {}
    # another pixel limit is another check
    assert 0 in check_all_media(records, max_pixels=10_000, checked=CheckedMedia(cache_file))

    os.utime(image, ns=(0, os.stat(image).st_mtime_ns + 10**9))  # modified: checked again
    problems = check_all_media(records, checked=CheckedMedia(cache_file))
    assert list(problems) == [0] and "cannot decode image" in problems[0]


def test_failures_are_not_remembered(tmp_path):
    cache_file = str(tmp_path / "checked.jsonl")
    missing = [_Record(Media("image", path=str(tmp_path / "nope.png")))]
    assert "not found" in check_all_media(missing, checked=CheckedMedia(cache_file))[0]
    assert not os.path.exists(cache_file)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    records = [_Record(Media("image", path=str(bad)))]
    for _ in range(2):
        assert 0 in check_all_media(records, checked=CheckedMedia(cache_file))


def test_torn_lines_and_unwritable_cache_do_not_stop_a_check(tmp_path, caplog):
    image = _png(tmp_path / "a.png")
    records = [_Record(Media("image", path=image))]
    cache_file = tmp_path / "checked.jsonl"
    cache_file.write_text('["/x", 1, 2, 3, 4]\n{"not": "ours"}\n["/torn", 1, ')
    cache = CheckedMedia(str(cache_file))
    assert check_all_media(records, checked=cache) == {}
    assert CheckedMedia.key(records[0].media[0], 89_478_485) in CheckedMedia(str(cache_file))

    blocked = tmp_path / "file"
    blocked.write_text("")
    unwritable = CheckedMedia(str(blocked / "checked.jsonl"))  # its directory is a file
    with caplog.at_level("WARNING"):
        assert check_all_media(records, checked=unwritable) == {}
    assert "cannot record checked media files" in caplog.text
