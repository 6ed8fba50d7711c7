"""The documentation site (mkdocs.yml, scripts/docs_hooks.py): README's links work in the site as on
GitHub, and a broken link, anchor or API reference fails the strict build that scripts/test runs.

Each test builds a copy of the site's sources (dualtrain itself linked, for the API reference), so
it can change them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO


def site_sources(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    (root / "scripts").mkdir(parents=True)
    for name in ("README.md", "mkdocs.yml", "scripts/docs_hooks.py"):
        shutil.copy(REPO / name, root / name)
    shutil.copytree(REPO / "docs", root / "docs")
    (root / "dualtrain").symlink_to(REPO / "dualtrain")
    return root


def build(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(root / "site")],
        cwd=root,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def append(path: Path, text: str) -> None:
    path.write_text(path.read_text() + f"\n{text}\n")


def test_readme_links_work_in_the_site_and_new_pages_build(tmp_path: Path) -> None:
    root = site_sources(tmp_path)
    append(root / "README.md", "[The recipe interface](dualtrain/recipe.py).")
    # What other branches add: a page not yet in nav, a notebook beside the pages.
    (root / "docs" / "notebook.ipynb").write_text('{"cells": [], "nbformat": 4}')
    (root / "docs" / "new-page.md").write_text("# New\n\n[The notebook](notebook.ipynb)\n")

    result = build(root)

    assert result.returncode == 0, result.stderr
    site = root / "site"
    home = (site / "index.html").read_text()
    # README's links, written for GitHub (docs/...), point at the site's pages and images.
    assert 'href="logging/"' in home
    assert 'href="training/#a-gan-two-phases"' in home
    assert 'src="images/tensorboard.png"' in home
    # A repository file outside docs/ is copied into the site and linked there.
    assert 'href="repository/dualtrain/recipe.py"' in home
    copied = (site / "repository" / "dualtrain" / "recipe.py").read_text()
    assert copied == (REPO / "dualtrain" / "recipe.py").read_text()
    # A page's link to README (../README.md#...) reaches the home page.
    assert 'href="../#your-own-recipe"' in (site / "data" / "index.html").read_text()
    # A page missing from nav builds, named at INFO; a notebook is copied as it is.
    assert "INFO" in result.stderr and "new-page.md" in result.stderr
    assert 'href="../notebook.ipynb"' in (site / "new-page" / "index.html").read_text()
    assert (site / "notebook.ipynb").is_file()
    # The API reference is rendered from the docstrings (Args -> Parameters).
    api = (site / "api" / "index.html").read_text()
    assert 'id="dualtrain.loading.load_model"' in api
    assert "a checkpoint directory, or a run directory" in api


def test_a_broken_link_anchor_or_api_reference_fails_the_build(tmp_path: Path) -> None:
    root = site_sources(tmp_path)
    append(root / "README.md", "[Gone](docs/no-such-page.md)")
    append(root / "docs" / "training.md", "[Gone](checkpoints.md#no-such-section)")
    append(root / "docs" / "api.md", "[Gone][dualtrain.loading.no_such_function]")

    result = build(root)

    assert result.returncode != 0, result.stderr
    assert result.stderr.count("WARNING") == 3, result.stderr
    assert "'README.md' contains a link 'docs/no-such-page.md'" in result.stderr
    assert "does not contain an anchor '#no-such-section'" in result.stderr
    assert "dualtrain.loading.no_such_function" in result.stderr
