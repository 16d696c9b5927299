"""The README, docs/ and the package carry no project history: no commit hashes, no issue
numbers (git holds those)."""

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HASH = re.compile(r"\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{7,40}\b")
ISSUE = re.compile(r"\bissues? ?#?\d+\b|(?<![\w&/])#\d{1,5}\b", re.IGNORECASE)


def _files():
    yield os.path.join(ROOT, "README.md")
    for top in ("docs", "urt_jax"):
        for folder, _, names in os.walk(os.path.join(ROOT, top)):
            for name in names:
                if name.endswith((".md", ".py", ".yaml", ".jinja")):
                    yield os.path.join(folder, name)


def test_no_commit_hashes_or_issue_numbers():
    found = []
    for path in _files():
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                for pattern in (HASH, ISSUE):
                    for match in pattern.finditer(line):
                        found.append(f"{os.path.relpath(path, ROOT)}:{number}: {match.group()}")
    assert not found, "\n".join(found)


def test_the_patterns_find_what_they_look_for():
    assert HASH.search("fixed in 850c0b4 last week") and not HASH.search("max_pixels 12845056")
    assert ISSUE.search("see issue 22") and ISSUE.search("(#25)") and not ISSUE.search("&#39;")


def test_readme_is_short_and_its_links_resolve():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    assert text.count("\n") <= 200
    links = re.findall(r"\]\(((?:docs/)?[\w./-]+\.md)\)", text)
    assert "docs/configuration.md" in links and "docs/cli.md" in links
    for link in links:
        assert os.path.isfile(os.path.join(ROOT, link)), link
    for folder, _, names in os.walk(os.path.join(ROOT, "docs")):
        for name in names:
            with open(os.path.join(folder, name), encoding="utf-8") as f:
                for link in re.findall(r"\]\(([\w./-]+\.md)\)", f.read()):
                    assert os.path.isfile(os.path.join(folder, link)), (name, link)
